"""moelab never writes through a symbolic link out of a folder it writes into (issue 19, item 8,
the trainer's and the atomic writers' part): a dangling metrics.jsonl link made `train` create
and append to any path; a link planted at a temporary name made an atomic write go through it."""

from __future__ import annotations

import os
import shutil

import pytest

from _robust import (
    expect_user_error,
    run_cli,
)
from moelab.io import atomic_dir, atomic_path, atomic_write_text


def test_dangling_metrics_link_is_refused(unfinished, tmp_path, capsys):
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir()
    (unfinished / "metrics.jsonl").unlink()
    (unfinished / "metrics.jsonl").symlink_to(victim)
    expect_user_error(
        capsys,
        ["train", "--out", unfinished, "--no-progress"],
        watch=[tmp_path],
        match=[r"metrics\.jsonl is a link to .*victim\.txt", r"outside the run folder"],
    )
    assert not victim.exists()


def test_checkpoints_linked_out_is_refused(unfinished, tmp_path, capsys):
    outside = tmp_path / "outside_ckpts"
    shutil.move(unfinished / "checkpoints", outside)
    (unfinished / "checkpoints").symlink_to(outside)
    expect_user_error(
        capsys,
        ["train", "--out", unfinished, "--no-progress"],
        watch=[tmp_path],
        match=[r"checkpoints is a link", r"outside the run folder"],
    )


def test_a_link_inside_the_run_is_fine(unfinished, capsys):
    (unfinished / "logs").mkdir()
    shutil.move(unfinished / "metrics.jsonl", unfinished / "logs" / "metrics.jsonl")
    (unfinished / "metrics.jsonl").symlink_to(unfinished / "logs" / "metrics.jsonl")
    rc, _, err = run_cli(capsys, ["train", "--out", unfinished, "--no-progress"])
    assert rc == 0, err


def test_atomic_writers_never_write_through_a_planted_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    folder = tmp_path / "f"
    folder.mkdir()
    pid = os.getpid()
    for name in ("a.txt", "b.bin"):
        (folder / f".{name}.tmp-{pid}").symlink_to(victim)
    (folder / f".c.tmp-{pid}").symlink_to(tmp_path)  # a folder link for atomic_dir

    atomic_write_text(folder / "a.txt", "new")
    with atomic_path(folder / "b.bin") as tmp:
        tmp.write_bytes(b"data")
    with atomic_dir(folder / "c") as tmp:
        (tmp / "x").write_text("x")

    assert victim.read_text() == "untouched"
    assert (folder / "a.txt").read_text() == "new" and not (folder / "a.txt").is_symlink()
    assert (folder / "b.bin").read_bytes() == b"data"
    assert (folder / "c" / "x").read_text() == "x" and not (folder / "c").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "victim"]


def test_a_linked_step_folder_is_refused_not_deleted(tmp_path):
    """checkpoints/step_N linked to a folder elsewhere, then step N saved again (a resumed run
    re-reaching it): one line, the linked folder untouched (was: rmtree's OSError traceback;
    reviewer's finding)."""
    from torch import nn

    from moelab.errors import MoelabError
    from moelab.train.checkpoint import save_checkpoint, step_dir

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    step_dir(run, 3).symlink_to(outside, target_is_directory=True)
    with pytest.raises(MoelabError, match=r"step_00000003 is a link to .*outside"):
        save_checkpoint(run, 3, nn.Linear(2, 2), {}, {}, keep_last=2)
    assert (outside / "keep.txt").read_text() == "x"
