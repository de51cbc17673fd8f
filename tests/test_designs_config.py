"""The design keys of ModelConfig (issue 17): validation in one line, and earlier runs keep their
config hash and config.yaml (a key at its default is not written)."""

from __future__ import annotations

import pytest
import yaml

from moelab.config import ModelConfig, to_dict
from moelab.errors import MoelabError
from moelab.train.config import run_config_from_dict

DESIGN_KEYS = (
    "d_expert",
    "n_shared_experts",
    "shared_expert_gate",
    "router_score",
    "norm_topk",
    "route_scale",
    "balance",
    "balance_scope",
    "bias_update_rate",
)


def _run(model) -> object:
    raw = {"model": model, "data": {"dir": "/nonexistent"}, "train": {"budget_tokens": 1000}}
    return run_config_from_dict(raw, check_data=False)


# Computed by the code before the design keys existed (commit a6179d2): they must not move.
@pytest.mark.parametrize(
    "model, digest",
    [
        ("moe-cpu-0.5m", "7dac9c3d5cc588d2"),
        ("dense-cpu-0.5m-modern", "c2558cb7f87e5c82"),
        (
            {"preset": "moe-cpu-0.5m-modern", "top_k": 1, "capacity_factor": None},
            "3bd5a84b5f94534d",
        ),
    ],
)
def test_earlier_runs_keep_their_config_hash(model, digest):
    cfg = _run(model)
    assert cfg.config_hash() == digest
    assert not set(DESIGN_KEYS) & set(yaml.safe_load(cfg.to_yaml())["model"])


def test_a_design_key_set_is_written_hashed_and_reloads():
    plain = _run("moe-cpu-0.5m")
    cfg = _run({"preset": "moe-cpu-0.5m", "n_shared_experts": 1})
    assert cfg.config_hash() != plain.config_hash()
    assert to_dict(cfg.model)["n_shared_experts"] == 1
    assert "n_shared_experts" not in to_dict(plain.model)
    again = run_config_from_dict(yaml.safe_load(cfg.to_yaml()), check_data=False)
    assert again.config_hash() == cfg.config_hash() and again.model == cfg.model


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"n_experts": 0, "d_expert": 64}, "model.d_expert"),
        ({"n_experts": 0, "balance": "bias"}, "model.balance"),
        ({"d_expert": 0}, "model.d_expert"),
        ({"n_shared_experts": -1}, "model.n_shared_experts"),
        ({"shared_expert_gate": True}, "model.shared_expert_gate"),
        ({"router_score": "tanh"}, "model.router_score"),
        ({"route_scale": 0.0}, "model.route_scale"),
        ({"balance": "sinkhorn"}, "model.balance"),
        ({"balance_scope": "epoch"}, "model.balance_scope"),
        ({"balance": "none", "balance_scope": "sequence"}, "model.balance_scope"),
        ({"balance": "bias", "bias_update_rate": 0.0}, "model.bias_update_rate"),
        ({"bias_update_rate": 0.01}, "model.bias_update_rate"),
        ({"balance": "bias", "aux_loss_weight": 0.1}, "model.aux_loss_weight"),
        ({"balance_scope": "global_batch", "aux_loss_weight": 0.0}, "model.balance_scope"),
        ({"balance": "bias", "second_expert_policy": "random"}, "model.second_expert_policy"),
        ({"balance": "bias", "top_k": 1, "norm_topk": True}, "model.norm_topk"),
        (
            {"router_score": "sigmoid", "second_expert_policy": "sampling"},
            "model.second_expert_policy",
        ),
    ],
)
def test_nonsense_is_refused_in_one_line_naming_the_key(changes, key):
    base = dict(n_layers=2, d_model=32, n_heads=2, d_ffn=64, n_experts=4, top_k=2)
    with pytest.raises(MoelabError) as e:
        ModelConfig(**{**base, **changes}).validate()
    assert str(e.value).startswith(key + ":") and "\n" not in str(e.value)
