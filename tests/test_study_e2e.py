"""A miniature study end to end: two sizes x (dense, MoE), tiny budgets and vocabulary, on text
and a task written here. The first attempt is killed (SIGKILL) while the third run trains; the
rerun must leave finished runs untouched, resume the interrupted one and write the report; the
report is then rebuilt from the finished runs alone."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moelab.cli import main
from study_helpers import mini_study

RUNS = ["tiny-dense-a", "tiny-moe-a", "tiny-dense-b", "tiny-moe-b"]
FIGURES = [
    "loss_in_domain",
    "loss_out_of_domain",
    "speedup",
    "domain_speedup",
    "expert_load",
    "shot_gains",
]


def _kill_when_third_run_checkpoints(cmd: list[str], out: Path, timeout: float = 240) -> bool:
    """Start the study in a subprocess; SIGKILL it once the third run has a checkpoint.
    Returns True when it was killed mid-run (False: it finished first)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True
    )
    ckpts = out / "runs" / RUNS[2] / "checkpoints"
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ckpts.is_dir() and any(p.name.startswith("step_") for p in ckpts.iterdir()):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail("the first study attempt did not reach the third run in time")
        assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
        return False
    finally:
        proc.stderr.close()


def _snapshot(out: Path) -> dict[str, tuple[int, bytes]]:
    snap = {}
    for name in RUNS:
        done = out / "runs" / name / "done.json"
        if done.is_file():
            snap[name] = (done.stat().st_mtime_ns, (done.parent / "metrics.jsonl").read_bytes())
    return snap


@pytest.mark.slow
def test_mini_study_end_to_end_resume_and_rebuild(tmp_path, capsys):
    cfg = mini_study(tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "moelab", "study", str(cfg), "--out", str(out)]
    killed = _kill_when_third_run_checkpoints(cmd, out)
    before = _snapshot(out)
    assert set(RUNS[:2]) <= set(before)  # the first two runs had finished
    third_done_before = RUNS[2] in before

    assert main(["study", str(cfg), "--out", str(out)]) == 0
    log = capsys.readouterr().out
    for name, (mtime, metrics) in before.items():  # nothing finished was retrained
        done = out / "runs" / name / "done.json"
        assert done.stat().st_mtime_ns == mtime, name
        assert (done.parent / "metrics.jsonl").read_bytes() == metrics, name
        assert f"training {name} " not in log
    # Killed at the third run's first checkpoint (8 of 64 steps): it resumes from there.
    assert killed and not third_done_before
    assert f"resuming {RUNS[2]}" in log and "[4/4] training tiny-moe-b" in log
    # The ETA counts evaluation too, once this process has timed one (the third run's).
    assert "estimated once the first run is evaluated" in log
    assert re.search(r"\[4/4\] training tiny-moe-b .*ETA \S+ training \+ \S+ evaluation", log)
    done = json.loads((out / "runs" / RUNS[2] / "done.json").read_text())
    assert done["resumed_from_step"]  # the trainer continued from its checkpoint

    # The table: one row per run and validation point; the last row of a run carries the rest.
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows if r["final"] == "true"] == RUNS
    for name in RUNS:
        metrics = [json.loads(x) for x in (out / "runs" / name / "metrics.jsonl").open()]
        n_val = len({m["step"] for m in metrics if m.get("val_loss")})
        assert sum(r["run"] == name for r in rows) == n_val >= 5
    final = {r["run"]: r for r in rows if r["final"] == "true"}
    for r in final.values():
        assert r["family"] in ("dense", "moe4-top2")
        assert int(r["params_total"]) >= int(r["params_active"]) > 0
        for col in (
            "train_flops",
            "tokens",
            "loss_in_domain",
            "loss_out_of_domain",
            "loss/prose",
            "loss/code",
            "loss/mixed",
            "eval_loss/mixed",
            "zero_shot/animals",
            "few_shot/animals",
            "finetune/animals",
            "zero_shot_mean",
            "train_wall_s",
        ):
            assert r[col] != "", (r["run"], col)
        assert 0.0 <= float(r["zero_shot/animals"]) <= 1.0
    assert float(final["tiny-moe-b"]["params_total"]) > float(final["tiny-dense-b"]["params_total"])
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["limit"] == 8 and data["meta"]["seeds"] == 2
    assert data["meta"]["out_domains"] == ["mixed"]

    # Report and figures.
    for fig in FIGURES:
        png = out / "plots" / f"{fig}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for fig in FIGURES:
        assert f"plots/{fig}.png" in md and f'src="plots/{fig}.png"' in html
    assert "8 items per task" in md or "at most 8 items" in md
    assert "2 few-shot seeds" in md
    fits = json.loads((out / "fits.json").read_text())
    assert fits["dense_family"] == "dense"
    assert fits["metrics"]["loss_in_domain"]["fits"]["dense"]["kind"] == "power_law"

    # Rebuild from the finished runs alone: same table, fresh report and plots.
    table = (out / "results.csv").read_bytes()
    for p in [out / "report.md", out / "report.html", out / "results.csv", out / "results.json"]:
        p.unlink()
    for png in (out / "plots").iterdir():
        png.unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "results.csv").read_bytes() == table
    assert (out / "report.md").read_text() == md
    assert all((out / "plots" / f"{fig}.png").is_file() for fig in FIGURES)
