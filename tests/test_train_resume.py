"""Exact resume: SIGKILL a training process mid-run, damage its newest checkpoint, resume, and
get the same losses at the same steps as an uninterrupted run (bitwise, on CPU)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from _train_data import make_prepared, tiny_config
from moelab.cli import main
from moelab.train import load_run_config, read_metrics, train
from moelab.train.checkpoint import list_checkpoints

STEPS = 40


def _config(prepared: Path) -> dict:
    # Dropout and the Gumbel 'sampling' second-expert policy make every step draw random
    # numbers, so resume must restore the RNG states, not just weights and optimizer.
    raw = tiny_config(
        prepared,
        moe=True,
        budget_steps=STEPS,
        checkpoint_every=8,
        keep_last=3,
        dropout=0.1,
        eval_tokens=512,
        log_every=1,
    )
    raw["model"]["second_expert_policy"] = "sampling"
    return raw


def _trace(run_dir: Path) -> list[tuple]:
    return [
        (
            r["step"],
            r["loss"],
            r["aux_loss"],
            r["lr"],
            r.get("val_loss"),
            [m["tokens_per_expert"] for m in r.get("moe", [])],
        )
        for r in read_metrics(run_dir)
    ]


def _train_cmd(config: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "moelab",
        "train",
        str(config),
        "--out",
        str(out),
        "--no-progress",
    ]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("train_resume"))


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(prepared, tmp_path):
    raw = _config(prepared)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    # 1. Start training in a subprocess and SIGKILL it once it is past step 17.
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(config, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            rows = read_metrics(killed)
            if rows and rows[-1]["step"] >= 17:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "done.json").exists(), "the run finished before it could be killed"
    ckpts = list_checkpoints(killed)
    assert len(ckpts) >= 2

    # 2. A copy whose checkpoints are all damaged cannot resume: exit 2, clear message.
    hopeless = tmp_path / "hopeless"
    shutil.copytree(killed, hopeless)
    for c in list_checkpoints(hopeless):
        (c.path / "state.pt").write_bytes(b"")
    assert main(["train", str(config), "--out", str(hopeless), "--no-progress"]) == 2

    # 3. Truncate the newest checkpoint's weights: resume skips it and says so.
    newest, previous = ckpts[-1], ckpts[-2]
    weights = newest.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    resumed = subprocess.run(
        _train_cmd(config, killed), env=env, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"checkpoint {newest.path.name} is not valid" in resumed.stderr
    assert f"resuming from checkpoint {previous.path.name}" in resumed.stderr

    # 4. An uninterrupted run of the same config gives the same numbers at every step.
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): same reduction order
    try:
        train(load_run_config(raw), tmp_path / "straight", progress=False)
    finally:
        torch.set_num_threads(before)
    straight, continued = _trace(tmp_path / "straight"), _trace(killed)
    assert [s[0] for s in straight] == list(range(1, STEPS + 1))
    assert continued == straight


def test_hopeless_resume_message(prepared, tmp_path, capsys):
    """Only when no checkpoint is valid does the run refuse, naming each and the fix."""
    raw = tiny_config(prepared, budget_steps=4, checkpoint_every=2, eval_tokens=0)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", str(config), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(before)
    (tmp_path / "r" / "done.json").unlink()  # as if it had been killed after the last save
    for c in list_checkpoints(tmp_path / "r"):
        meta = c.path / "meta.json"
        meta.write_text(meta.read_text()[:20])
    capsys.readouterr()
    assert main(["train", str(config), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no valid checkpoint to resume from (step_00000004: meta.json is not valid JSON" in err
    assert "to start over" in err


def test_run_made_by_import_is_refused_in_one_line(prepared, tmp_path, capsys):
    """A run folder as `moelab import` writes it (step 0, no optimizer or RNG state) cannot be
    resumed: one line naming the import and what to do instead, and the folder is unchanged."""
    from moelab.interop.hf_import import write_run_files
    from moelab.model import build_model

    raw = tiny_config(prepared, budget_steps=4, eval_tokens=0)
    cfg = load_run_config(raw)
    run = tmp_path / "imported"
    meta = {"step": 0, "tokens": 0, "config_hash": cfg.config_hash(), "imported_from": "HF"}
    tokenizer = (prepared / "tokenizer.json").read_bytes()
    write_run_files(run, build_model(cfg.model, seed=0), cfg, tokenizer, meta)
    before = sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*"))
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "moelab import" in err and "finetune" in err, err
    assert sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*")) == before


@pytest.mark.parametrize("flush_before", [False, True])
def test_training_leaves_flush_denormal_as_it_was(prepared, tmp_path, flush_before):
    """The trainer flushes denormals on CPU for speed, but only while it runs: the process
    setting (hypothesis, a notebook) is restored afterwards."""
    from moelab.train.trainer import _flush_denormal_enabled

    torch.set_flush_denormal(flush_before)
    try:
        raw = tiny_config(prepared, budget_steps=2, eval_tokens=0)
        train(load_run_config(raw), tmp_path / "run", progress=False)
        assert _flush_denormal_enabled() is flush_before
        assert (torch.tensor([1e-300], dtype=torch.float64) * 1e-10).item() != 0 or flush_before
    finally:
        torch.set_flush_denormal(False)
