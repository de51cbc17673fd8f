"""A full disk during a checkpoint, `prepare` or a lock file: one line saying no space is left,
where, and which checkpoint is intact; nothing half-written left (issue 19 item 10).

The disk is real: a 2 MB tmpfs mounted for the test and filled with a file, so the writers get
a genuine ENOSPC from the kernel (torch.save, safetensors and tokenizers each report it their
own way). Mounting needs root; elsewhere the tests are skipped."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from _robust import (
    run_cli,
    tiny_run_config,
    write_corpus,
    write_yaml,
)
from moelab.data import prepare
from moelab.train.checkpoint import newest_valid


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave_kb: int) -> Path:
    """Fill ``disk`` with a file until ``leave_kb`` KiB are free; returns the file."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    free_kb = shutil.disk_usage(disk).free // 1024
    with open(filler, "wb") as f:
        f.write(bytes(max(0, free_kb - leave_kb) * 1024))
    return filler


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    return errors[0]


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "src", 40, seed=1)


def test_checkpoint_on_a_full_disk(small_disk, corpus, tmp_path, capsys):
    """A run on the small disk, interrupted after its step-2 checkpoint, resumed once the disk
    is full: the step-4 checkpoint cannot be written (~360 KB). One line names the device and
    the intact step-2 checkpoint; with space freed, the same command finishes the run."""
    data = tmp_path / "data"
    prepare(data, sources=[f"alpha={corpus}/*.txt"], vocab_size=300)
    cfg = write_yaml(tmp_path / "run.yaml", tiny_run_config(data, moe=False, keep_last=10))
    run = small_disk / "run"
    rc, _, err = run_cli(capsys, ["train", cfg, "--out", run, "--no-progress"])
    assert rc == 0, err
    (run / "done.json").unlink()  # as a kill right after the step-2 checkpoint leaves it
    shutil.rmtree(run / "checkpoints" / "step_00000004")
    filler = fill(small_disk, leave_kb=150)

    rc, _, err = run_cli(capsys, ["train", "--out", run, "--no-progress"])
    line = one_error_line(err)
    assert rc == 2, err
    assert "no space left" in line and str(run / "checkpoints") in line, line
    assert "step_00000002 (step 2), is intact" in line, line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002"]
    found, skipped = newest_valid(run)
    assert found is not None and found.step == 2 and not skipped

    filler.unlink()
    rc, _, err = run_cli(capsys, ["train", "--out", run, "--no-progress"])
    assert rc == 0, err
    assert json.loads((run / "done.json").read_text())["steps"] == 4


@pytest.mark.parametrize("leave_kb", [4, 12])
def test_prepare_on_a_full_disk(small_disk, corpus, capsys, leave_kb):
    """The disk fills while the tokenizer or the shards are written: one line, and neither the
    output folder, its temporary folder nor its lock file is left."""
    fill(small_disk, leave_kb)
    out = small_disk / "data"
    argv = ["prepare", "--out", out, "--source", f"alpha={corpus}/*.txt", "--vocab-size", "300"]
    rc, _, err = run_cli(capsys, [*argv, "--no-progress"])
    line = one_error_line(err)
    assert rc == 2, err
    assert "no space left" in line and str(small_disk) in line, line
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_lock_file_on_a_full_disk(small_disk, corpus, capsys):
    fill(small_disk, 0)
    out = small_disk / "data"
    argv = ["prepare", "--out", out, "--source", f"alpha={corpus}/*.txt", "--no-progress"]
    rc, _, err = run_cli(capsys, argv)
    line = one_error_line(err)
    assert rc == 2 and "no space left" in line and ".data.lock" in line, err
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
