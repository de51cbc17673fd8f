"""Warmup-stable-decay with cooldown branches: every branch end is annealed (its last rate is
the floor), a branch leaves the main run bitwise untouched, and a resume through a branch
reproduces the uninterrupted run's metrics and weights exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _train_data import make_prepared, tiny_config
from moelab.errors import MoelabError
from moelab.train import load_run_config, read_metrics, train
from moelab.train.checkpoint import list_checkpoints
from moelab.train.schedule import LrSchedule, cooldown_lr, cooldown_plan

STEPS = 48
LR, FLOOR = 1e-2, 0.1


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("wsd"))


def _raw(prepared: Path, cooldowns: int, **train) -> dict:
    # Dropout and the sampling second-expert policy draw random numbers every step: a branch
    # that did not restore the generators would shift the main run's stream.
    raw = tiny_config(
        prepared,
        moe=True,
        budget_steps=STEPS,
        schedule="wsd",
        cooldowns=cooldowns,
        min_lr_ratio=FLOOR,
        lr=LR,
        warmup_steps=4,
        dropout=0.1,
        eval_tokens=512,
        eval_points=4,
        checkpoint_every=6,
        keep_last=20,
        **train,
    )
    raw["model"]["second_expert_policy"] = "sampling"
    return raw


def _train(raw: dict, out: Path) -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(load_run_config(raw), out, progress=False)
    finally:
        torch.set_num_threads(before)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(list_checkpoints(run)[-1].path / "model.safetensors")


def _timeless(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "wall_s")} for r in rows]


def test_wsd_shape_and_plan():
    s = LrSchedule(1.0, warmup_steps=10, total_steps=200, kind="wsd", min_lr_ratio=0.1)
    assert s.decay_start == 160
    assert s(5) == pytest.approx(0.5) and s(10) == 1.0 and s(160) == 1.0
    assert s(180) == pytest.approx(0.1 + 0.9 * 0.5) and s(200) == pytest.approx(0.1)
    plan = cooldown_plan(s, 5)
    # budgets 100, 50, 25 (12.5 would fork inside the warmup): forks at 80% of each
    assert [(c.fork_step, c.end_step) for c in plan] == [(20, 25), (40, 50), (80, 100)]
    assert all(cooldown_lr(1.0, 0.1, c.length, c.length) == pytest.approx(0.1) for c in plan)
    assert cooldown_plan(LrSchedule(1.0, 10, 200, "linear"), 3) == []


def test_cooldowns_need_wsd(prepared):
    raw = tiny_config(prepared, cooldowns=2)
    with pytest.raises(MoelabError, match="train.cooldowns: cooldown branches need"):
        load_run_config(raw)


@pytest.mark.slow
def test_branches_are_annealed_leave_no_trace_and_resume_exactly(prepared, tmp_path):
    with_branches = tmp_path / "branches"
    summary = _train(_raw(prepared, cooldowns=3), with_branches)
    rows = read_metrics(with_branches)
    branch_rows = [r for r in rows if r.get("branch")]
    assert [(r["fork_step"], r["step"]) for r in branch_rows] == [(5, 6), (10, 12), (19, 24)]
    for r in branch_rows:
        assert r["annealed"] is True
        assert r["lr"] == pytest.approx(LR * FLOOR)  # the branch ended at the floor
        assert set(r["val_loss"]) == {"alpha", "beta", "gamma"}
    final = [r for r in rows if r.get("val_loss") and not r.get("branch")][-1]
    assert final["step"] == STEPS and final["annealed"] is True
    assert final["lr"] == pytest.approx(LR * FLOOR)
    mid_run = [r for r in rows if "val_loss" in r and not r.get("branch")][:-1]
    assert mid_run and not any(r["annealed"] for r in mid_run)
    # Spent compute counts the branches; the trajectory's compute does not.
    per_step = summary["flops"] / STEPS
    assert summary["flops_spent"] == pytest.approx(per_step * (STEPS + 1 + 2 + 5))

    # The branches leave the main trajectory bitwise as it was without them.
    plain = tmp_path / "plain"
    _train(_raw(prepared, cooldowns=0), plain)
    main_rows = [
        (r["step"], r["loss"], r["lr"], r.get("val_loss")) for r in rows if not r.get("branch")
    ]
    assert main_rows == [
        (r["step"], r["loss"], r["lr"], r.get("val_loss")) for r in read_metrics(plain)
    ]
    a, b = _weights(with_branches), _weights(plain)
    assert all(torch.equal(a[k], b[k]) for k in a)

    # Resume from the checkpoint at step 18 (after branch 10, before branch 19): both runs'
    # files end up identical, branch rows included.
    resumed = tmp_path / "resumed"
    shutil.copytree(with_branches, resumed)
    (resumed / "done.json").unlink()
    for c in list_checkpoints(resumed):
        if c.step > 18:
            shutil.rmtree(c.path)
    _train(_raw(prepared, cooldowns=3), resumed)
    assert _timeless(read_metrics(resumed)) == _timeless(rows)
    c = _weights(resumed)
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_cooldown_plan_forks_are_distinct_and_in_the_stable_phase():
    for total in range(2, 80):
        for warmup in (0, 1, 3):
            for f in (0.1, 0.2, 0.5, 0.7, 0.9):
                s = LrSchedule(1.0, warmup, total, "wsd", decay_fraction=f)
                plan = cooldown_plan(s, 6)
                forks = [c.fork_step for c in plan]
                assert len(set(forks)) == len(forks), (total, warmup, f)
                assert all(warmup < c.fork_step < s.decay_start for c in plan)
                assert all(s(c.fork_step) == 1.0 for c in plan)  # forked at the peak rate


def test_cooldowns_need_validation(prepared):
    raw = tiny_config(prepared, schedule="wsd", cooldowns=2, eval_tokens=0)
    with pytest.raises(MoelabError, match="train.cooldowns: cooldown branches exist to be"):
        load_run_config(raw)
