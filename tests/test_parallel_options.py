"""Settings of distributed runs (environment) and their user errors; no processes needed."""

from __future__ import annotations

import pytest

from moelab.errors import MoelabError
from moelab.parallel.launch import check_ep, default_ep, env_world, setup_from_env
from moelab.parallel.options import ParallelOptions


def test_defaults_and_environment(monkeypatch):
    for key in ("MOELAB_EP", "MOELAB_EXPERT_GRAD", "MOELAB_FSDP_BF16", "MOELAB_DIST_TIMEOUT_S"):
        monkeypatch.delenv(key, raising=False)
    assert ParallelOptions.from_env() == ParallelOptions()
    monkeypatch.setenv("MOELAB_EP", "4")
    monkeypatch.setenv("MOELAB_EXPERT_GRAD", "paper")
    monkeypatch.setenv("MOELAB_FSDP_BF16", "1")
    monkeypatch.setenv("MOELAB_DIST_TIMEOUT_S", "30")
    assert ParallelOptions.from_env() == ParallelOptions(
        ep=4, expert_grad="paper", bf16_params=True, timeout_s=30.0
    )


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MOELAB_EP", "two", "MOELAB_EP='two': expected an integer"),
        ("MOELAB_EXPERT_GRAD", "sqrt", "expected one of exact, paper"),
        ("MOELAB_DIST_TIMEOUT_S", "soon", "not a number of seconds"),
        ("MOELAB_DIST_TIMEOUT_S", "0", "must be > 0"),
    ],
)
def test_bad_settings_are_one_line_errors(monkeypatch, key, value, message):
    monkeypatch.setenv(key, value)
    with pytest.raises(MoelabError, match=message):
        ParallelOptions.from_env()


def test_expert_parallel_degree():
    assert default_ep(8, 512) == 8
    assert default_ep(6, 8) == 2
    assert default_ep(4, 0) == 1
    check_ep(2, 4, 8)
    with pytest.raises(MoelabError, match="does not divide the world size 4"):
        check_ep(3, 4, 6)
    with pytest.raises(MoelabError, match="does not divide model.n_experts=6"):
        check_ep(4, 4, 6)


def test_world_from_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert env_world() == 1
    monkeypatch.setenv("WORLD_SIZE", "x")
    with pytest.raises(MoelabError, match="not an integer"):
        env_world()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(MoelabError, match="launch with `torchrun"):
        setup_from_env(n_experts=4)
