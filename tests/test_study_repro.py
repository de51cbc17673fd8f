"""A study is a pure function of its config: the same tiny study (WSD with cooldown branches,
replicate seeds) run twice, once run by run and once on two worker processes (`--jobs 2`),
gives identical results tables, and the table marks annealed and branch points as the trainer
logged them."""

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
import yaml

from moelab.cli import main
from study_helpers import mini_study

TIMES = ("train_wall_s", "eval_wall_s")


def _table(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMES} for r in csv.DictReader(f)]


@pytest.mark.slow
def test_same_seed_same_table_in_sequence_and_in_parallel(tmp_path, capsys):
    cfg_path = mini_study(tmp_path, with_tasks=False, budget_tokens=12288)
    study = yaml.safe_load(cfg_path.read_text())
    study["base"]["train"].update(schedule="wsd", cooldowns=3, eval_points=3)
    study["grid"]["model"] = study["grid"]["model"][:2]
    study["replicates"] = {"seeds": [2], "models": ["tiny-dense-a", "tiny-moe-a"]}
    study["eval"] = {"ppl": False}
    study["fit"] = {"bootstrap": 0, "frontier": "annealed"}
    cfg_path.write_text(yaml.safe_dump(study, sort_keys=False))

    out_a, out_b = tmp_path / "seq", tmp_path / "par"
    assert main(["study", str(cfg_path), "--out", str(out_a)]) == 0
    # `--jobs 2` is the command line's `workers: 2` (issue 16 item 6's must-show)
    assert main(["study", str(cfg_path), "--out", str(out_b), "--jobs", "2"]) == 0
    log = capsys.readouterr().out
    assert "4 runs on 2 worker processes" in log

    timing = json.loads((out_b / "study_time.json").read_text())
    assert timing["invocations"][-1]["workers"] == 2 and timing["wall_s"] > 0
    a, b = _table(out_a / "results.csv"), _table(out_b / "results.csv")
    assert a == b
    runs = {r["run"] for r in a}
    assert runs == {"tiny-dense-a", "tiny-moe-a", "tiny-dense-a__seed=2", "tiny-moe-a__seed=2"}
    assert {r["seed"] for r in a} == {"1", "2"}
    for run in runs:
        rows = [r for r in a if r["run"] == run]
        metrics = [
            json.loads(x) for x in (out_a / "runs" / run / "metrics.jsonl").open() if x.strip()
        ]
        branches = [m for m in metrics if m.get("branch")]
        assert len(branches) >= 2
        assert sorted(int(r["step"]) for r in rows if r["branch"] == "true") == sorted(
            m["step"] for m in branches
        )
        assert all(r["annealed"] == "true" for r in rows if r["branch"] == "true")
        final = [r for r in rows if r["final"] == "true"]
        assert len(final) == 1 and final[0]["annealed"] == "true" and final[0]["branch"] == "false"
        # spent compute counts the cooldowns: more than the trajectory's at the end
        assert float(final[0]["train_flops_spent"]) > float(final[0]["train_flops"])


def _children(pid: int) -> list[int]:
    import subprocess

    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize(
    "sig, runs", [(signal.SIGKILL, 4), (signal.SIGTERM, 4), (signal.SIGKILL, 2)]
)
def test_killing_a_parallel_study_ends_its_workers(tmp_path, sig, runs):
    """SIGKILL or SIGTERM to the study process alone: its worker processes end too, instead of
    training on as orphans. SIGTERM reaches the workers as their death signal while they train,
    so their training saves a checkpoint and stops; a worker must then end rather than take the
    next run still queued for it (four runs on two workers: two are queued), as it did. With one
    short and one long run on two workers, the short run's worker is idle when the death signal
    comes: it must end too (it waited for a task forever once the signal was noted rather than
    fatal)."""
    cfg_path = mini_study(tmp_path, with_tasks=False, budget_tokens=200_000)
    study = yaml.safe_load(cfg_path.read_text())
    study["workers"] = 2
    study["grid"]["model"] = study["grid"]["model"][:runs]
    if runs == 2:  # the first run ends long before the second
        first = study["grid"]["model"][0]["name"]
        study["per_model"] = {first: {"train.budget_tokens": 8192}}
    study["eval"] = {"ppl": False}
    cfg_path.write_text(yaml.safe_dump(study, sort_keys=False))
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "moelab", "study", str(cfg_path), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300  # the study prepares its data first: slow when busy
        workers: list[int] = []
        while time.monotonic() < deadline and len(workers) < 2:
            workers = [
                c
                for c in _children(proc.pid)
                if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text(errors="replace")
            ]
            time.sleep(0.2)
        assert len(workers) == 2, "the study did not start two workers"
        # signal once both runs are training (a metrics row written), not while they import;
        # with a short run, once it is done and its worker idle
        want = "runs/*/study_eval.json" if runs == 2 else "runs/*/metrics.jsonl"
        need = 1 if runs == 2 else 2
        while time.monotonic() < deadline and len(list(out.glob(want))) < need:
            time.sleep(0.2)
        assert len(list(out.glob(want))) == need, f"no {need} of {want}"
        time.sleep(0.5)
        proc.send_signal(sig)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
            time.sleep(0.2)
        alive = [w for w in workers if Path(f"/proc/{w}").exists()]
        assert not alive, f"workers {alive} outlived the killed study"
    finally:
        if proc.poll() is None:
            proc.kill()


def _metrics_steps(run: Path) -> list[int]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return [r["step"] for r in rows if not r.get("branch")]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_parallel_study_saves_its_training_runs_and_resumes(tmp_path, sig):
    """A scheduler's SIGTERM, or Ctrl-C, reaches the study and its workers together (one
    process group). Each run in training finishes its step and saves a checkpoint there (no
    periodic checkpoint exists: checkpoint_every is beyond the budget), no queued run starts,
    the study ends with one line and 128 + the signal, and the same command resumes it. Before,
    the study killed its workers (Ctrl-C) or died and sent them a second signal (SIGTERM):
    either way no checkpoint."""
    cfg_path = mini_study(tmp_path, with_tasks=False, budget_tokens=300_000)
    study = yaml.safe_load(cfg_path.read_text())
    study["workers"] = 2
    study["eval"] = {"ppl": False}
    study["base"]["train"]["checkpoint_every"] = 10**6
    cfg_path.write_text(yaml.safe_dump(study, sort_keys=False))
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "moelab", "study", str(cfg_path), "--out", str(out)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 360  # data preparation, then two runs' first steps
        training: list[Path] = []
        while time.monotonic() < deadline and len(training) < 2:
            training = [
                m.parent for m in out.glob("runs/*/metrics.jsonl") if _metrics_steps(m.parent)
            ]
            time.sleep(0.2)
        assert len(training) == 2, "no two runs training"
        os.killpg(proc.pid, sig)  # the whole group, as Ctrl-C or a scheduler does
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert f"study stopped by {signal.Signals(sig).name}" in last and "resumes" in last, last
    for run in training:
        ckpts = sorted((run / "checkpoints").glob("step_*"))
        assert len(ckpts) == 1, f"{run.name}: {ckpts}"  # the stop checkpoint, nothing else
        step = json.loads((ckpts[0] / "meta.json").read_text())["step"]
        assert step == max(_metrics_steps(run)) and step > 0
    started = {m.parent for m in out.glob("runs/*/metrics.jsonl")}
    assert started == set(training)  # no queued run started after the signal
    if sig == signal.SIGTERM:  # the same command resumes and finishes every run
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        assert len(list(out.glob("runs/*/done.json"))) == 4
