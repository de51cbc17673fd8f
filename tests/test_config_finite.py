"""NaN, infinity and numbers beyond float range are refused by config validation in one line,
exit 2 (issue 19, item 11): train.weight_decay=nan trained to NaN losses and no checkpoint,
model.init_std=nan was a traceback, norm_eps, aux_loss_weight, z_loss_weight and rope_theta
accepted nan/inf, and a config holding NaN could never resume ("nan -> nan")."""

from __future__ import annotations

from pathlib import Path

import pytest

from _robust import expect_user_error, tiny_run_config, write_yaml
from moelab.config import ModelConfig
from moelab.errors import MoelabError
from moelab.train.config import TrainConfig


@pytest.fixture(scope="module")
def config(shared_data, tmp_path_factory) -> Path:
    cfg = tiny_run_config(shared_data)
    cfg["model"]["arch"] = "modern"  # rope_theta and init_std count only here
    return write_yaml(tmp_path_factory.mktemp("finite") / "run.yaml", cfg)


SETS = [
    ("train.weight_decay=nan", r"train\.weight_decay.*finite"),
    ("train.weight_decay=.nan", r"train\.weight_decay.*finite"),
    ("train.lr=.inf", r"train\.lr.*finite"),
    ("train.lr=1e400", r"train\.lr.*finite"),  # YAML reads it as a string; float() gives inf
    ("train.eps=-.inf", r"train\.eps.*finite"),
    ("train.clip=nan", r"train\.clip.*finite"),
    ("train.betas=[0.9, .nan]", r"train\.betas\[1\].*finite"),
    ("train.budget_steps=.nan", r"train\.budget_steps.*integer"),
    ("train.budget_tokens=nan", r"train\.budget_tokens.*integer"),
    ("train.budget_tokens=.inf", r"train\.budget_tokens.*integer"),
    ("train.budget_flops=1e400", r"train\.budget_flops.*finite"),
    (f"train.budget_flops={10**400}", r"train\.budget_flops.*finite"),  # an int beyond float
    ("model.init_std=nan", r"model\.init_std.*finite"),
    ("model.norm_eps=nan", r"model\.norm_eps.*finite"),
    ("model.norm_eps=.inf", r"model\.norm_eps.*finite"),
    ("model.norm_eps=0", r"model\.norm_eps.*> 0"),
    ("model.aux_loss_weight=nan", r"model\.aux_loss_weight.*finite"),
    ("model.z_loss_weight=.inf", r"model\.z_loss_weight.*finite"),
    ("model.rope_theta=nan", r"model\.rope_theta.*finite"),
    ("model.rope_theta=-1", r"model\.rope_theta.*> 0"),
    ("model.capacity_factor=.inf", r"model\.capacity_factor.*finite"),
    ("data.weights={alpha: .nan}", r"data\.weights\.alpha.*finite"),
]


@pytest.mark.parametrize("override, match", SETS, ids=[s for s, _ in SETS])
def test_non_finite_values_are_one_line(config, tmp_path, capsys, override, match):
    if "budget" in override and "budget_steps" not in override:  # one budget at a time
        override = f"{override} --set train.budget_steps=null".split(" --set ")
    else:
        override = [override]
    argv = ["train", config, "--out", tmp_path / "run"]
    for item in override:
        argv += ["--set", item]
    expect_user_error(capsys, argv, watch=[tmp_path], match=[match])


def test_a_saved_config_holding_nan_is_refused_when_loaded(config, tmp_path, capsys):
    """A run folder whose config.yaml holds NaN (written by an older moelab) is refused with
    the key, not resumed into NaN."""
    text = config.read_text().replace("lr: 0.001", "lr: .nan")
    assert ".nan" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    expect_user_error(capsys, ["train", bad, "--out", tmp_path / "r"], match=[r"train\.lr"])


def test_configs_built_in_python_are_checked_too():
    with pytest.raises(MoelabError, match=r"model\.norm_eps: expected a finite number"):
        ModelConfig(norm_eps=float("nan")).validate()
    with pytest.raises(MoelabError, match=r"train\.weight_decay: expected a finite number"):
        TrainConfig(budget_steps=4, weight_decay=float("inf")).validate()
    with pytest.raises(MoelabError, match=r"train\.betas: expected a finite number"):
        TrainConfig(budget_steps=4, betas=[0.9, float("nan")]).validate()
    ModelConfig().validate()
    TrainConfig(budget_steps=4).validate()


@pytest.mark.parametrize("value", ["nan", "inf", "1e400"])
def test_budget_tokens_flag_non_finite_is_one_line(config, tmp_path, capsys, value):
    expect_user_error(
        capsys,
        ["train", config, "--out", tmp_path / "run", "--budget-tokens", value],
        watch=[tmp_path],
        match=[r"budget.tokens"],
    )
