"""Run config loading and validation, budgets, schedule, shipped recipes (no training)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

from _train_data import make_prepared, tiny_config
from moelab.errors import MoelabError
from moelab.flops import train_flops_per_token
from moelab.presets import PAPER_TRAINING
from moelab.train import eval_steps, load_run_config, resolve_budget, run_config_from_dict
from moelab.train.config import config_differences
from moelab.train.schedule import LrSchedule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("train_cfg"))


def test_vocab_comes_from_the_data_and_is_noted(prepared):
    cfg = load_run_config(tiny_config(prepared))
    assert cfg.model.vocab_size == 320
    assert "model.vocab_size: 320, from the data's tokenizer" in cfg.to_yaml()
    # The resolved YAML reloads to the same config.
    again = load_run_config(yaml.safe_load(cfg.to_yaml()))
    assert config_differences(cfg, again) == []
    assert again.config_hash() == cfg.config_hash()


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lr=fast", "train.lr"),
        ("train.lrr=1", "train.lrr"),
        ("train.schedule=step", "train.schedule"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.grad_accum=3", "train.grad_accum"),
        ("train.dtype=fp16", "train.dtype"),
        ("train.betas=[0.9]", "train.betas"),
        ("model.n_heads=3", "model.n_heads"),
        ("model.vocab_size=999", "model.vocab_size"),
        ("model.preset=nope", "model.preset"),
        ("data.weights.nope=1", "data.weights.nope"),
        ("train.seq_len=100", "train.seq_len"),
        ("train.seed=-1", "train.seed"),
        ("data.weights={alpha: 0}", "data.weights"),
    ],
)
def test_config_errors_name_the_dotted_key(prepared, override, key):
    with pytest.raises(MoelabError) as e:
        load_run_config(tiny_config(prepared), [override])
    assert key in str(e.value)


def test_exactly_one_budget(prepared):
    raw = tiny_config(prepared)
    raw["train"]["budget_tokens"] = 1000
    with pytest.raises(MoelabError, match="exactly one budget"):
        load_run_config(raw)
    raw["train"].pop("budget_tokens")
    raw["train"].pop("budget_steps")
    with pytest.raises(MoelabError, match="exactly one budget"):
        load_run_config(raw)


def test_missing_data_folder_and_unknown_section(prepared, tmp_path):
    with pytest.raises(MoelabError, match="data.dir"):
        load_run_config(tiny_config(tmp_path / "absent"))
    raw = tiny_config(prepared)
    raw["trian"] = {}
    with pytest.raises(MoelabError, match="trian"):
        load_run_config(raw)


def test_preset_name_with_overrides(prepared):
    raw = {"model": "moe-cpu-0.5m", "data": str(prepared), "train": {"budget_steps": 3}}
    cfg = load_run_config(raw, ["model.n_experts=4", "train.seq_len=64"])
    assert cfg.model.n_experts == 4 and cfg.model.name == "moe-cpu-0.5m"
    assert cfg.train.seq_len == 64


def test_budgets_in_flops_tokens_steps(prepared):
    cfg = load_run_config(tiny_config(prepared))
    tps = cfg.train.batch_size * cfg.train.seq_len
    fpt = train_flops_per_token(cfg.model, cfg.train.seq_len)
    b = resolve_budget(load_run_config(tiny_config(prepared, budget_steps=7)))
    assert b.total_steps == 7 and b.total_flops == fpt * 7 * tps
    raw = tiny_config(prepared)
    raw["train"].pop("budget_steps")
    b = resolve_budget(
        load_run_config({**raw, "train": {**raw["train"], "budget_tokens": 10 * tps}})
    )
    assert b.total_steps == 10
    flops = 12.5 * tps * fpt
    b = resolve_budget(load_run_config({**raw, "train": {**raw["train"], "budget_flops": flops}}))
    assert b.total_steps == 13  # the first step at which the budget is met
    assert b.total_flops >= flops > b.flops_at(12)


def test_schedule_shapes():
    lin = LrSchedule(1.0, warmup_steps=10, total_steps=110, kind="linear", min_lr_ratio=0.1)
    assert lin(5) == pytest.approx(0.5) and lin(10) == pytest.approx(1.0)
    assert lin(60) == pytest.approx(0.1 + 0.9 * 0.5) and lin(110) == pytest.approx(0.1)
    cos = LrSchedule(1.0, warmup_steps=0, total_steps=100, kind="cosine")
    assert cos(50) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0, abs=1e-12)
    assert all(lin(s) >= lin(s + 1) for s in range(10, 110))


def test_eval_steps_are_log_spaced_and_end_at_the_budget():
    steps = eval_steps(1000, 4)
    assert steps == [1, 10, 100, 1000]
    assert eval_steps(7, 1) == [7]
    assert eval_steps(20, 8)[-1] == 20


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    raw = yaml.safe_load(path.read_text())
    cfg = run_config_from_dict(raw, check_data=False)
    t = cfg.train
    assert t.betas == [0.9, 0.98] and t.eps == 1e-8 and t.weight_decay == 0.01
    assert t.clip is None and t.schedule == "linear"
    if path.name.startswith("paper-"):
        lr, batch_tokens = PAPER_TRAINING[cfg.model.name]
        assert t.lr == lr and t.batch_size * t.seq_len == batch_tokens
        assert t.budget_tokens == 300_000_000_000 and t.warmup_tokens == 375_000_000
        assert cfg.model.dropout == 0.1 and not math.isnan(resolve_budget(cfg).flops_per_token)


def test_upcycled_from_is_recorded_hashed_but_not_its_place(prepared, tmp_path):
    from moelab.train.rundir import STUDY_MARKER, stored_config

    plain = load_run_config(tiny_config(prepared, moe=True))
    assert "upcycled_from" not in plain.to_dict()  # other runs keep their config and hash
    up = {"run": "/old/dense", "config_hash": "abc", "step": 4, "tokens": 512, "train_flops": 1e9}
    raw = {**tiny_config(prepared, moe=True), "upcycled_from": up}
    cfg = load_run_config(raw)
    assert cfg.upcycled_from.step == 4 and cfg.to_dict()["upcycled_from"] == up
    assert load_run_config(yaml.safe_load(cfg.to_yaml())).upcycled_from == cfg.upcycled_from
    assert cfg.config_hash() != plain.config_hash()
    moved = load_run_config({**raw, "upcycled_from": {**up, "run": "/new/dense"}})
    assert moved.config_hash() == cfg.config_hash() and config_differences(cfg, moved) == []
    # A study run's stored config (data.dir made relative) keeps every section.
    study = tmp_path / "study"
    (study / "runs").mkdir(parents=True)
    (study / STUDY_MARKER).write_text("")
    inside = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=str(study / "d")))
    inside.parallel.activation_checkpointing = True
    kept = stored_config(inside, study / "runs" / "r")
    assert kept.data.dir == "../../d" and kept.upcycled_from == cfg.upcycled_from
    assert kept.parallel.activation_checkpointing
    with pytest.raises(MoelabError, match="^upcycled_from.step: expected an integer") as e:
        load_run_config({**raw, "upcycled_from": {**up, "step": "four"}})
    assert "\n" not in str(e.value)
