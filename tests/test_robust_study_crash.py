"""A study killed during training, during evaluation and during report writing, then re-run,
ends with the same results table as an uninterrupted study with the same seed (wall times aside).

The kill is injected in process: a function the study calls raises :class:`SimulatedKill`, a
``BaseException`` that no ``except Exception`` can swallow, so only ``finally`` blocks run, as
with a real kill. What a real SIGKILL would also leave behind (a half-written checkpoint folder
or result file under its temporary name) is then put in place by hand, so the re-run meets it.

One study folder goes through all three kills in a row: killed while writing run 2's last
checkpoint; the re-run (which resumes run 2) killed while evaluating run 2; the next re-run
killed while writing the report; the last re-run finishes. The baseline is the shared,
uninterrupted micro-study (tests/_robust.py).
"""

from __future__ import annotations

import json

import pytest

from _robust import (
    micro_study_config,
    results_csv_without_wall_times,
    results_table,
    write_yaml,
)
from moelab.cli import main


class SimulatedKill(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing but ``finally`` sees it."""


def kill_on_call(monkeypatch, module, attr: str, n: int, before=None) -> dict:
    """Make ``module.attr`` raise SimulatedKill on its ``n``-th call (after ``before(*args)``)."""
    original = getattr(module, attr)
    calls = {"n": 0, "killed": False}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            if before is not None:
                before(*args, **kwargs)
            calls["killed"] = True
            raise SimulatedKill(f"{attr} call {n}")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, attr, wrapper)
    return calls


def _study(cfg_path, out) -> int:
    return main(["study", str(cfg_path), "--out", str(out)])


@pytest.mark.slow
def test_killed_study_resumes_to_the_same_results(
    micro_study, tmp_path_factory, tmp_path, monkeypatch
):
    import moelab.eval.priming as priming
    import moelab.study.analysis.report as report
    import moelab.train.checkpoint as checkpoint

    baseline = micro_study
    cfg = write_yaml(tmp_path / "study.yaml", micro_study_config(tmp_path_factory))
    out = tmp_path / "study"
    runs = out / "runs"

    # 1. Killed while writing run 2's step-4 checkpoint (calls: run 1 steps 2 and 4, run 2
    # steps 2 and 4). Half the weights reach the temporary folder before the kill.
    save_file = checkpoint.save_file

    def half_written(tensors, filename, metadata=None):
        save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(f.seek(0, 2) // 2)

    with monkeypatch.context() as m:
        calls = kill_on_call(m, checkpoint, "save_file", 4, before=half_written)
        with pytest.raises(SimulatedKill):
            _study(cfg, out)
        assert calls["killed"]
    run2 = sorted(p for p in runs.iterdir())[1]
    assert not (run2 / "done.json").exists()
    assert [p.name for p in (run2 / "checkpoints").iterdir()] == ["step_00000002"]
    # what a SIGKILL leaves: the half-built checkpoint folder under its temporary name
    leftover = run2 / "checkpoints" / ".step_00000004.tmp-424242"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"\x00" * 100)

    # 2. The re-run resumes run 2 and is killed while evaluating it (perplexity done, the
    # zero-shot task not yet).
    with monkeypatch.context() as m:
        calls = kill_on_call(m, priming, "evaluate_task", 1)
        with pytest.raises(SimulatedKill):
            _study(cfg, out)
        assert calls["killed"]
    assert (run2 / "done.json").is_file() and not (run2 / "study_eval.json").exists()
    assert not leftover.exists(), "the trainer left a half-written checkpoint folder behind"
    (run2 / ".study_eval.json.tmp-424242").write_text('{"eval_key": "half')

    # 3. The next re-run evaluates run 2 and is killed while writing the report (results table,
    # fits and report.md written, report.html not).
    with monkeypatch.context() as m:
        calls = kill_on_call(m, report, "to_html", 1)
        with pytest.raises(SimulatedKill):
            _study(cfg, out)
        assert calls["killed"]
    assert (out / "report.md").is_file() and not (out / "report.html").exists()
    (out / ".report.html.tmp-424242").write_text("<html><body>half")

    # 4. The last re-run finishes.
    assert _study(cfg, out) == 0
    assert (out / "report.html").is_file()
    got = results_table(out, cfg)
    want = results_table(baseline, baseline.with_suffix(".yaml"))
    assert got["columns"] == want["columns"]
    assert got["meta"] == want["meta"]
    assert got["rows"] == want["rows"]
    assert results_csv_without_wall_times(out) == results_csv_without_wall_times(baseline)
    for run in runs.iterdir():
        json.loads((run / "study_eval.json").read_text())  # complete, parseable


@pytest.mark.slow
def test_sigkilled_study_resumes_to_the_same_results(
    micro_study, tmp_path_factory, tmp_path, capsys
):
    """The real thing once: `moelab study` in its own process, SIGKILLed as soon as the second
    run has its first checkpoint (so somewhere in that run's training or evaluation), then
    re-run to the end: the same results table as the uninterrupted study."""
    import os
    import signal
    import subprocess
    import sys
    import time

    baseline = micro_study
    cfg = write_yaml(tmp_path / "study.yaml", micro_study_config(tmp_path_factory))
    out = tmp_path / "study"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moelab", "study", str(cfg), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            found = (out / "runs").glob("[!.]*") if (out / "runs").is_dir() else []  # no locks
            runs = sorted(found)
            if len(runs) == 2 and any((runs[1] / "checkpoints").glob("step_*")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the study finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (out / "report.html").exists()

    assert _study(cfg, out) == 0
    got = results_table(out, cfg)
    want = results_table(baseline, baseline.with_suffix(".yaml"))
    assert got == want
    assert results_csv_without_wall_times(out) == results_csv_without_wall_times(baseline)
