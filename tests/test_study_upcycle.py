"""A study grid entry `{upcycle: {from: DENSE, step: N, experts: E, top_k: K}}` (issue 17 item 5):
the dense run trains first (keeping its checkpoint N), the upcycled run is made from it with
moelab upcycle and trained on the rest of the budget; its FLOPs count the dense run's to N and
its family says so. Real tiny runs; the killed parallel study resumes to the same table."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from _robust import run_cli, snapshot
from moelab.study.plan.config import load_study
from moelab.study.run.sweep import build_plan
from moelab.train.loading import load_model
from study_helpers import mini_study

UP = "upcycled-tiny-dense-a-4x-top2-step16"  # the entry's run (and model) name
ENTRY = {"upcycle": {"from": "tiny-dense-a", "step": 16, "experts": 4}}
TIMES = ("train_wall_s", "eval_wall_s")


def _study(tmp: Path, **changes) -> Path:
    """The mini study's smaller dense model (32 steps of 256 tokens, a checkpoint every 8)
    and an MoE upcycled from it at step 16; its step-0 checkpoint is kept (keep_last)."""
    path = mini_study(tmp, with_tasks=False, budget_tokens=8192)
    study = yaml.safe_load(path.read_text())
    study["grid"]["model"] = [ENTRY, study["grid"]["model"][0]]  # listed first: runs second
    study["per_model"] = {UP: {"train.keep_last": 100}}
    study["eval"] = {"ppl": False}
    study["fit"] = {"bootstrap": 0}
    study.update(changes)
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMES} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The study run once, run after run."""
    tmp = tmp_path_factory.mktemp("up")
    out = tmp / "out"
    done = subprocess.run(
        [sys.executable, "-m", "moelab", "study", str(_study(tmp)), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return out


def test_the_grid_puts_the_upcycled_run_after_its_dense_run(tmp_path):
    """Plan only: the dense run first, whatever the grid's order; the upcycled run's budget is
    the rest of the dense run's tokens; the dense run keeps every checkpoint (keep_last, not
    hashed: its config hash is the one it has without the entry); replicate seeds pair up."""
    path = _study(tmp_path, replicates={"seeds": [2], "models": ["tiny-dense-a", UP]})
    plan = build_plan(load_study(path), tmp_path / "o", measure=False)
    names = [p.name for p in plan]
    assert names == ["tiny-dense-a", "tiny-dense-a__seed=2", UP, f"{UP}__seed=2"]
    dense, dense2, up, up2 = plan
    assert (up.upcycle["dense"], up2.upcycle["dense"]) == (dense.name, dense2.name)
    assert up.steps == 16 and up.tokens == 4096 and dense.steps == 32
    assert up.run_config.train.seed == 2 and up2.run_config.train.seed == 3  # dense seed + 1
    source = up.run_config.upcycled_from
    assert source.step == 16 and source.tokens == 4096
    assert source.config_hash == dense.run_config.config_hash()
    assert up.family == f"moe4-top2 upcycled from tiny-dense-a at {source.train_flops:.3g} FLOPs"
    assert up.family == up2.family and up.preset == UP
    assert dense.run_config.train.keep_last >= 32
    alone = yaml.safe_load(path.read_text())
    alone["grid"]["model"] = alone["grid"]["model"][1:]
    alone["per_model"], alone["replicates"] = {}, {}
    path.write_text(yaml.safe_dump(alone))
    [plain] = build_plan(load_study(path), tmp_path / "o", measure=False)
    assert plain.run_config.config_hash() == dense.run_config.config_hash()
    assert plain.run_config.train.keep_last == 2


@pytest.mark.parametrize(
    ("upcycle", "needle"),
    [
        ({"from": "tiny-dense-z", "step": 16, "experts": 4}, "'tiny-dense-z' is not a grid"),
        ({"from": "tiny-dense-a", "step": 40, "experts": 4}, "step 40 is not a checkpoint"),
        ({"from": "tiny-dense-a", "step": 32, "experts": 4}, "before its last step"),
        ({"from": "tiny-dense-a", "step": 12, "experts": 4}, "saves every 8"),
        ({"from": "tiny-dense-a", "step": 16, "experts": 1}, "experts must be >= 2"),
        ({"from": "tiny-dense-a", "step": 16, "experts": 4, "top_k": 5}, "top_k must be"),
        ({"from": "tiny-dense-a", "step": 16}, "an upcycled run is {upcycle: {from:"),
        ({"from": "tiny-dense-a", "step": 16, "experts": 4, "lr": 1}, "an upcycled run is"),
        ({"from": "tiny-moe-a", "step": 16, "experts": 4}, "already an MoE"),
    ],
)
def test_a_bad_entry_is_one_line_and_writes_nothing(finished, capsys, upcycle, needle):
    """Refused before anything is written: the finished study's folder is as it was."""
    study = yaml.safe_load((finished / "study.yaml").read_text())
    moe = mini_study(finished.parent / "m", with_tasks=False)
    study["grid"]["model"] += [yaml.safe_load(moe.read_text())["grid"]["model"][1]]
    study["grid"]["model"][0] = {"upcycle": upcycle}
    study["per_model"] = {}
    path = finished.parent / "bad.yaml"
    path.write_text(yaml.safe_dump(study))
    before = snapshot(finished.parent)
    rc, _, err = run_cli(capsys, ["study", path, "--out", finished])
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err
    assert snapshot(finished.parent) == before


def test_the_upcycled_run_starts_as_the_dense_checkpoint_and_counts_its_flops(finished):
    dense, up = finished / "runs" / "tiny-dense-a", finished / "runs" / UP
    meta = json.loads((dense / "checkpoints" / "step_00000016" / "meta.json").read_text())
    source = yaml.safe_load((up / "config.yaml").read_text())["upcycled_from"]
    assert source == {
        "run": str(dense.resolve()),
        "config_hash": meta["config_hash"],
        "step": 16,
        "tokens": 4096,
        "train_flops": meta["flops"],
    }
    # step 0 of the upcycled run computes the dense checkpoint's logits
    a, _, _ = load_model(dense, step=16)
    b, _, meta0 = load_model(up, step=0)
    assert meta0["step"] == 0 and b.cfg.n_experts == 4
    tokens_BT = torch.randint(
        0, a.cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        diff = (a(tokens_BT).logits_BTV - b(tokens_BT).logits_BTV).abs().max()
    assert diff < 1e-5
    # trained on the rest of the budget; every FLOPs column adds the dense run's 16 steps
    done = json.loads((up / "done.json").read_text())
    assert done["steps"] == 16 and done["tokens"] == 4096
    results = json.loads((finished / "results.json").read_text())["rows"]
    rows = [r for r in results if r["run"] == UP]
    [final] = [r for r in rows if r["final"]]
    assert final["train_flops"] == meta["flops"] + done["flops"]
    label = f"moe4-top2 upcycled from tiny-dense-a at {meta['flops']:.3g} FLOPs"
    assert {r["family"] for r in rows} == {label}
    assert label in (finished / "report.md").read_text()


def test_the_upcycled_runs_seed_column_is_its_dense_runs(finished):
    """It trains with the dense seed + 1 but belongs to the dense seed's replicate: the table
    and the report show the grid's one seed."""
    seeds = {
        r["run"]: r["seed"] for r in json.loads((finished / "results.json").read_text())["rows"]
    }
    config = yaml.safe_load((finished / "runs" / UP / "config.yaml").read_text())
    assert seeds[UP] == seeds["tiny-dense-a"] == config["train"]["seed"] - 1
    assert "(one per configuration: no run-to-run noise" in (finished / "report.md").read_text()


def test_the_report_counts_the_dense_compute_to_the_checkpoint_once(finished):
    """The report's total training FLOPs are the plan's: the upcycled run's own, not again the
    dense run's to step 16 that its FLOPs columns add."""
    total = sum(r["train_flops"] for r in json.loads((finished / "plan.json").read_text()))
    assert f"{total:.3g} training FLOPs in all" in (finished / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups, /proc")
def test_a_parallel_study_killed_after_the_dense_run_resumes_to_the_same_table(finished, tmp_path):
    """Two workers: the upcycled run waits for its dense run. SIGKILL to the whole study (its
    workers included) once the dense run is evaluated; the same command then finishes the
    upcycled run, and the table is the run-after-run study's."""
    cmd = [sys.executable, "-m", "moelab", "study", str(_study(tmp_path, workers=2))]
    cmd += ["--out", str(tmp_path / "out")]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    dense_done = tmp_path / "out" / "runs" / "tiny-dense-a" / "study_eval.json"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not dense_done.is_file() and proc.poll() is None:
            time.sleep(0.05)
        assert dense_done.is_file() and proc.poll() is None, proc.communicate()[0]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (tmp_path / "out" / "runs" / UP / "done.json").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "1 of 2 runs already finished" in done.stdout
    assert _table(tmp_path / "out" / "results.csv") == _table(finished / "results.csv")


def test_an_array_task_of_the_upcycled_run_before_its_dense_run_is_refused(tmp_path, capsys):
    """`--only` (a Slurm array task) of the upcycled run while its dense run has no checkpoint
    at the step: one line, exit 2, no run folder."""
    path, out = _study(tmp_path), tmp_path / "out"
    rc, _, err = run_cli(capsys, ["study", path, "--out", out, "--emit", "slurm", tmp_path / "s"])
    assert rc == 0, err
    rc, _, err = run_cli(capsys, ["study", path, "--out", out, "--only", UP])
    assert rc == 2 and err.count("\n") == 1 and "train the dense run first" in err, err
    assert not (out / "runs").exists()


def test_the_upcycled_run_keeps_the_base_keep_last_not_the_dense_runs_raised_one(tmp_path):
    """The dense run keeps every checkpoint; its upcycled run the grid's keep_last, unless its
    per_model sets one."""
    path = _study(tmp_path, per_model={})
    dense, up = build_plan(load_study(path), tmp_path / "o", measure=False)
    assert dense.run_config.train.keep_last >= 32
    assert up.run_config.train.keep_last == 2 and "train.keep_last=2" in up.upcycle["overrides"]
    path = _study(tmp_path)  # per_model: {UP: {train.keep_last: 100}}
    assert (
        build_plan(load_study(path), tmp_path / "o", measure=False)[1].run_config.train.keep_last
        == 100
    )


def test_a_dense_checkpoint_rotated_away_is_refused_before_anything_starts(
    finished, tmp_path, capsys
):
    """A dense run trained before the entry was added kept its last two checkpoints only: the
    study (two workers) refuses in one line, naming keep_last and the steps there are."""
    import shutil

    out = tmp_path / "out"
    dense = out / "runs" / "tiny-dense-a"
    shutil.copytree(finished / "runs" / "tiny-dense-a", dense)
    for step in (0, 8, 16):
        shutil.rmtree(dense / "checkpoints" / f"step_{step:08d}", ignore_errors=True)
    before = snapshot(out)
    rc, _, err = run_cli(capsys, ["study", _study(tmp_path, workers=2), "--out", out])
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "keep_last rotated it away; it has steps 24, 32): delete" in err
    assert snapshot(out) == before
