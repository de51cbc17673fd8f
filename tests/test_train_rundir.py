"""Leftovers of interrupted checkpoint writes (``checkpoints/.step_N.tmp-PID``)."""

from __future__ import annotations

import os
import subprocess
import sys

from moelab.train.rundir import clear_stale


def test_stale_staging_folders_of_dead_writers_go_and_live_ones_stay(tmp_path):
    ckpts = tmp_path / "checkpoints"
    (ckpts / "step_00000001").mkdir(parents=True)
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()  # a process that is gone
    dead, alive = f".step_00000002.tmp-{done.pid}", f".step_00000004.tmp-{os.getpid()}"
    (ckpts / dead).mkdir()
    (ckpts / alive).mkdir()
    clear_stale(tmp_path, locked=False)  # ranks sharing the folder: only dead writers' go
    assert sorted(p.name for p in ckpts.iterdir()) == [alive, "step_00000001"]
    clear_stale(tmp_path, locked=True)  # the folder's lock holder: no other writer is live
    assert [p.name for p in ckpts.iterdir()] == ["step_00000001"]
