"""The run config's ``parallel:`` section: validation, environment overrides written into the
stored config, the config hash, and a resume with another expert-gradient normalisation refused.
No processes needed: the section is stored and checked the same way on one process."""

from __future__ import annotations

import pytest
import yaml

from _train_data import make_prepared, tiny_config
from moelab.errors import MoelabError
from moelab.parallel.launch import check_ep, default_ep, env_world, setup_from_env
from moelab.parallel.options import ParallelConfig
from moelab.train import load_run_config, read_run_config, train
from moelab.train.config import OPERATIONAL_KEYS, _hash, flatten, with_parallel_env

ENV = ("MOELAB_EP", "MOELAB_EXPERT_GRAD", "MOELAB_FSDP_BF16", "MOELAB_DIST_TIMEOUT_S")


@pytest.fixture
def no_env(monkeypatch):
    for key in ENV:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("data"))


def _raw(prepared, **parallel) -> dict:
    raw = tiny_config(prepared, moe=True, budget_steps=2, batch_size=2, seq_len=16, device="cpu")
    if parallel:
        raw["parallel"] = parallel
    return raw


def test_section_defaults_and_environment_overrides(no_env):
    assert ParallelConfig().with_env() == (ParallelConfig(), [])
    no_env.setenv("MOELAB_EP", "4")
    no_env.setenv("MOELAB_EXPERT_GRAD", "paper")
    no_env.setenv("MOELAB_FSDP_BF16", "1")
    no_env.setenv("MOELAB_DIST_TIMEOUT_S", "30")
    got, notes = ParallelConfig().with_env()
    assert got == ParallelConfig(ep=4, expert_grad="paper", param_dtype="bf16", timeout_s=30.0)
    assert "parallel.expert_grad: paper, from MOELAB_EXPERT_GRAD" in notes


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MOELAB_EP", "two", "MOELAB_EP='two': expected an integer"),
        ("MOELAB_EP", "0", "MOELAB_EP: must be >= 1"),
        ("MOELAB_EXPERT_GRAD", "sqrt", "expected one of exact, paper"),
        ("MOELAB_DIST_TIMEOUT_S", "soon", "MOELAB_DIST_TIMEOUT_S='soon': expected a number of"),
        ("MOELAB_DIST_TIMEOUT_S", "0", "MOELAB_DIST_TIMEOUT_S: must be a number of seconds > 0"),
    ],
)
def test_bad_environment_is_one_line(no_env, key, value, message):
    no_env.setenv(key, value)
    with pytest.raises(MoelabError, match=message) as e:
        ParallelConfig().with_env()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"expert_grad": "sqrt"}, "parallel.expert_grad: must be exact or paper, got 'sqrt'"),
        ({"param_dtype": "fp16"}, "parallel.param_dtype: must be fp32 or bf16"),
        ({"reduce_dtype": 16}, "parallel.reduce_dtype: expected"),
        ({"ep": 0}, "parallel.ep: must be >= 1 or null"),
        ({"ep": "two"}, "parallel.ep: expected"),
        ({"timeout_s": -1}, "parallel.timeout_s: must be a number of seconds > 0"),
        ({"timeout_s": float("nan")}, "parallel.timeout_s: expected a finite number"),
        ({"activation_checkpointing": "full"}, "parallel.activation_checkpointing: expected"),
        ({"fsdp": True}, "unknown config key parallel.fsdp; valid keys"),
        ("fast", "parallel: expected a mapping"),
    ],
)
def test_bad_section_is_one_line_naming_the_key(prepared, section, message):
    raw = _raw(prepared)
    raw["parallel"] = section
    with pytest.raises(MoelabError, match=message) as e:
        load_run_config(raw)
    assert "\n" not in str(e.value)


def test_numeric_keys_enter_the_hash_and_defaults_leave_it_as_before(prepared):
    default = load_run_config(_raw(prepared))
    # The hash of a config without the section, computed as before it existed.
    flat = flatten({k: v for k, v in default.to_dict().items() if k != "parallel"})
    before = _hash({k: v for k, v in flat.items() if k not in OPERATIONAL_KEYS | {"data.dir"}})
    assert default.config_hash() == before
    spread = load_run_config(_raw(prepared, ep=2, timeout_s=20, activation_checkpointing=True))
    assert spread.config_hash() == before  # how the work is spread: not in the hash
    for changed in ({"expert_grad": "paper"}, {"param_dtype": "bf16"}, {"reduce_dtype": "bf16"}):
        assert load_run_config(_raw(prepared, **changed)).config_hash() != before, changed


def test_set_from_python_stored_and_a_resume_with_another_expert_grad_refused(
    prepared, tmp_path, no_env
):
    run = tmp_path / "run"
    train(load_run_config(_raw(prepared, expert_grad="paper")), run, progress=False)
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["parallel"]["expert_grad"] == "paper"
    assert read_run_config(run).parallel.expert_grad == "paper"
    # The same config again: already complete, nothing to do.
    train(load_run_config(_raw(prepared, expert_grad="paper")), run, progress=False)
    with pytest.raises(MoelabError, match="parallel.expert_grad: 'paper' -> 'exact'") as e:
        train(load_run_config(_raw(prepared)), run, progress=False)
    assert "\n" not in str(e.value)


def test_environment_override_is_written_into_the_stored_config(prepared, tmp_path, no_env):
    no_env.setenv("MOELAB_EXPERT_GRAD", "paper")
    cfg = with_parallel_env(load_run_config(_raw(prepared)))
    assert cfg.parallel.expert_grad == "paper"
    train(load_run_config(_raw(prepared)), tmp_path / "run", progress=False)
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert "# parallel.expert_grad: paper, from MOELAB_EXPERT_GRAD" in text
    assert yaml.safe_load(text)["parallel"]["expert_grad"] == "paper"
    # Resuming without the variable, from the run's own config, keeps the stored value.
    no_env.delenv("MOELAB_EXPERT_GRAD")
    assert read_run_config(tmp_path / "run").parallel.expert_grad == "paper"


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
