"""SIGTERM (a scheduler's preemption notice) and SIGINT during training: the step finishes, a
checkpoint is saved there, the process exits with one line; resuming gives the same numbers at
every step as an uninterrupted run (issue 19, item 17)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from _train_data import make_prepared, tiny_config
from moelab.train import load_run_config, read_metrics, train
from moelab.train.checkpoint import list_checkpoints

STEPS = 40


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("train_stop"))


def _trace(run_dir: Path) -> list[tuple]:
    return [(r["step"], r["loss"], r["lr"], r.get("val_loss")) for r in read_metrics(run_dir)]


def _train(config: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "moelab", "train", str(config), "--out", str(out)]
    return subprocess.Popen(
        cmd + ["--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _signal_after(proc: subprocess.Popen, out: Path, step: int, sig: int) -> tuple[str, str]:
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            rows = read_metrics(out)
            if rows and rows[-1]["step"] >= step:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.005)
        proc.send_signal(sig)
        return proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_matches_uninterrupted_run(prepared, tmp_path):
    # No periodic checkpoint before the end: without the signal handling nothing would be saved.
    raw = tiny_config(prepared, moe=True, budget_steps=STEPS, checkpoint_every=1000, dropout=0.1)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    proc = _train(config, out)
    _, err = _signal_after(proc, out, 8, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    last = read_metrics(out)[-1]["step"]
    assert 8 <= last < STEPS and not (out / "done.json").exists()
    assert [c.step for c in list_checkpoints(out)] == [last]
    final = err.strip().splitlines()[-1]
    assert final.startswith(f"stopped by SIGTERM at step {last} of {STEPS}: checkpoint"), err
    assert f"step_{last:08d} saved" in final and "resumes" in final

    resumed = _train(config, out)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resuming from checkpoint step_{last:08d} (step {last})" in err

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses: same reduction order
    try:
        train(load_run_config(raw), tmp_path / "straight", progress=False)
    finally:
        torch.set_num_threads(before)
    assert _trace(out) == _trace(tmp_path / "straight")


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_too(prepared, tmp_path):
    raw = tiny_config(prepared, budget_steps=STEPS, checkpoint_every=1000, eval_tokens=0)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    proc = _train(config, out)
    _, err = _signal_after(proc, out, 3, signal.SIGINT)
    assert proc.returncode == 128 + signal.SIGINT, err
    last = read_metrics(out)[-1]["step"]
    assert [c.step for c in list_checkpoints(out)] == [last]
    assert err.strip().splitlines()[-1].startswith(f"stopped by SIGINT at step {last}")


def test_training_stopped_crosses_a_process_boundary():
    """A study's worker sends the exception back to the study: it must unpickle whole (it did
    not: its __init__ takes two arguments and the pickle carried one)."""
    import pickle

    from moelab.train.stop import TrainingStopped

    e = pickle.loads(pickle.dumps(TrainingStopped("stopped by SIGTERM at step 3", 15)))
    assert (str(e), e.signum, e.exit_code) == ("stopped by SIGTERM at step 3", 15, 143)


@pytest.mark.parametrize("repeat_stops_at_once", [True, False])
def test_a_step_that_outlasts_the_grace_period_stops_with_the_signals_code(
    monkeypatch, repeat_stops_at_once
):
    """The grace timer ends a step that never reaches its boundary: exit code 128 + SIGTERM (it
    was 130, a plain interrupt), and also in a study worker, where a repeated signal is ignored
    and the timer's interrupt used to be ignored with it (no bound at all)."""
    import os
    import signal
    import time

    from moelab.train import stop as stop_mod
    from moelab.train.stop import StopRequest, TrainingStopped

    monkeypatch.setenv("MOELAB_STOP_GRACE_S", "0.2")
    monkeypatch.setattr(stop_mod, "REPEAT_STOPS_AT_ONCE", repeat_stops_at_once)
    with pytest.raises(TrainingStopped) as e:
        with StopRequest():
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # a step that never ends
                time.sleep(0.01)
    assert e.value.exit_code == 143 and "did not end within 0.2 s" in str(e.value)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
