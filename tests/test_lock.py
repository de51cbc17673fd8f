"""One process per output folder: `train`, `study` and `prepare` hold a lock on their --out.

The reproduction (issue 19, item 1): two `moelab train CFG --out R` started together mixed two
runs in one folder. Here a real `moelab train` holds R while a second real process is refused
in one line naming the holder, and R is left as the first one made it; a lock left by a dead
process (on this host, or on another host whose heartbeat stopped) is taken over.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _robust import (
    expect_user_error,
    micro_study_config,
    run_cli,
    snapshot,
    tiny_run_config,
    write_corpus,
    write_yaml,
)
from moelab import lock as lock_mod
from moelab.errors import MoelabError
from moelab.lock import FolderLock, lock_path


def _foreign_lock(folder: Path, *, age_s: float, host: str = "node-17", pid: int = 4242) -> Path:
    """A lock file as another host's moelab would write it, last heartbeat ``age_s`` ago."""
    path = lock_path(folder.resolve())
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    rec = {"host": host, "pid": pid, "command": "train", "since": now - age_s - 60}
    rec.update(heartbeat=now - age_s, token="foreign")
    path.write_text(json.dumps(rec) + "\n", encoding="utf-8")
    return path


def _moelab(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "moelab", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kw,
    )


def test_second_train_on_a_folder_in_use_is_refused(shared_data, tmp_path):
    """A long `moelab train` holds R; a second one (another lr) is refused, R unchanged; the
    first is then SIGKILLed and its lock (same host, dead PID) is taken over at once."""
    cfg = write_yaml(tmp_path / "run.yaml", tiny_run_config(shared_data, budget_steps=100_000))
    out = tmp_path / "R"
    first = _moelab("train", str(cfg), "--out", str(out), "--no-progress")
    try:
        deadline = time.monotonic() + 120
        while not any((out / "checkpoints").glob("step_*")) and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        held = json.loads(lock_path(out).read_text())
        assert held["pid"] == first.pid and held["host"] == socket.gethostname()
        before = snapshot(out / "config.yaml")
        second = _moelab(
            "train", str(cfg), "--out", str(out), "--set", "train.lr=0.001", "--no-progress"
        )
        _, err = second.communicate(timeout=120)
        assert first.poll() is None, "the first run ended before the second was refused"
        assert second.returncode == 2, err
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        assert f"pid {first.pid}" in err and socket.gethostname() in err and "since" in err, err
        assert snapshot(out / "config.yaml") == before  # still the first run's config
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert lock_path(out).is_file()  # a SIGKILL runs no cleanup
    with FolderLock(out, "train"):  # same host, dead PID: stale now, no waiting for heartbeats
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    assert not lock_path(out).exists()


def test_stale_lock_from_another_host_is_taken_over(shared_data, tmp_path, capsys):
    """A lock whose holder (another host) stopped beating an hour ago: train proceeds."""
    cfg = write_yaml(tmp_path / "run.yaml", tiny_run_config(shared_data))
    out = tmp_path / "R"
    _foreign_lock(out, age_s=3600)
    rc, _, err = run_cli(capsys, ["train", str(cfg), "--out", str(out), "--no-progress"])
    assert rc == 0, err
    assert "taking over the stale lock" in err and "node-17" in err
    assert (out / "done.json").is_file() and not lock_path(out).exists()


def test_live_lock_from_another_host_refuses_train_and_leaves_temporaries(
    shared_data, tmp_path, capsys
):
    """Another host holds R (fresh heartbeat; its PID means nothing here): refused in one line,
    and its in-progress checkpoint temp folder is not deleted as stale."""
    cfg = write_yaml(tmp_path / "run.yaml", tiny_run_config(shared_data))
    out = tmp_path / "R"
    (out / "checkpoints" / ".step_00000002.tmp-1").mkdir(parents=True)
    _foreign_lock(out, age_s=1, pid=1)
    expect_user_error(
        capsys,
        ["train", str(cfg), "--out", str(out), "--no-progress"],
        watch=[tmp_path],
        match=[r"in use by moelab train", r"pid 1 on host node-17", r"since", str(out)],
    )


def test_prepare_refused_while_locked_and_cleans_only_under_its_lock(tmp_path, capsys):
    src = write_corpus(tmp_path / "src", 6)
    out = tmp_path / "P"
    args = ["prepare", "--source", f"a={src}/*.txt", "--out", str(out), "--vocab-size", "300"]
    # A temporary folder of another host's live preparation: refused, and left alone.
    (tmp_path / ".P.tmp-1").mkdir()
    _foreign_lock(out, age_s=1, pid=1)
    expect_user_error(capsys, args, watch=[tmp_path], match=[r"in use by", r"node-17"])
    # The holder died (heartbeat an hour old): its temporary folder goes with its lock,
    # whatever PID its name carries (it may be live here and mean another process).
    _foreign_lock(out, age_s=3600, pid=1)
    rc, _, err = run_cli(capsys, args)
    assert rc == 0, err
    assert (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["P", "src"]


def test_study_refused_while_locked(tmp_path_factory, tmp_path, capsys):
    cfg = write_yaml(tmp_path / "study.yaml", micro_study_config(tmp_path_factory))
    out = tmp_path / "S"
    _foreign_lock(out, age_s=1)
    expect_user_error(
        capsys,
        ["study", str(cfg), "--out", str(out)],
        watch=[tmp_path],
        match=[r"in use by", r"node-17"],
    )


def test_heartbeat_advances_and_release_removes_only_our_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_mod, "HEARTBEAT_S", 0.05)
    folder = tmp_path / "new" / "deeper" / "R"
    with FolderLock(folder, "train") as held:
        first = json.loads(lock_path(folder).read_text())["heartbeat"]
        time.sleep(0.3)
        assert json.loads(lock_path(folder).read_text())["heartbeat"] > first
        assert lock_mod.holds_lock(folder) and not held.lost
    assert not lock_path(folder).exists()
    assert not (tmp_path / "new").exists()  # parents made only for the lock go with it
    folder2 = tmp_path / "x" / "R"
    _foreign_lock(folder2, age_s=1)
    with pytest.raises(MoelabError):
        FolderLock(folder2, "train").acquire()
    assert lock_path(folder2).is_file()  # a refused process never removes the holder's lock


def test_a_lock_file_that_cannot_be_created_is_one_line(shared_data, tmp_path, capsys):
    """A folder name at the file name limit leaves no room for its lock file's name."""
    cfg = write_yaml(tmp_path / "run.yaml", tiny_run_config(shared_data))
    expect_user_error(
        capsys,
        ["train", str(cfg), "--out", str(tmp_path / ("r" * 250)), "--no-progress"],
        watch=[tmp_path],
        match=[r"cannot create its lock file", r"too long"],
    )


def test_unlocked_cleanup_spares_a_live_processes_temporary(tmp_path):
    """Without the lock (distributed jobs) only temporaries of PIDs gone from this host go;
    with it, all do (no other live writer can exist)."""
    from moelab.train.rundir import clear_stale

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    ).stdout.strip()
    ckpts = tmp_path / "checkpoints"
    for pid in (dead, os.getpid()):
        (ckpts / f".step_00000002.tmp-{pid}").mkdir(parents=True, exist_ok=True)
    clear_stale(tmp_path, locked=False)
    assert [p.name for p in ckpts.iterdir()] == [f".step_00000002.tmp-{os.getpid()}"]
    clear_stale(tmp_path, locked=True)
    assert list(ckpts.iterdir()) == []


def test_a_pid_is_only_checked_in_its_own_pid_space(shared_data, tmp_path, capsys):
    """Containers can share a host name but not PIDs (host networking), and a restarted one may
    get the old holder's PID (reviewer's findings). A fresh lock from this host name with a dead
    PID but another PID namespace is live (refused); one naming this very process in this PID
    space is not ours (we do not hold it), so it is stale and taken over."""
    import os
    import socket

    from moelab.lock import _pid_space

    cfg = write_yaml(tmp_path / "run.yaml", tiny_run_config(shared_data))
    out = tmp_path / "R"
    path = _foreign_lock(out, age_s=1, host=socket.gethostname(), pid=2**22 + 17)  # no such PID
    rec = json.loads(path.read_text())
    here = _pid_space()
    if "pidns" not in here:
        pytest.skip("no /proc PID namespace on this platform")
    path.write_text(json.dumps({**rec, **here, "pidns": here["pidns"] + 1}) + "\n")
    expect_user_error(
        capsys,
        ["train", str(cfg), "--out", str(out), "--no-progress"],
        watch=[tmp_path],
        match=[r"in use by moelab train"],
    )
    path.write_text(json.dumps({**rec, **here, "pid": os.getpid()}) + "\n")
    rc, _, err = run_cli(capsys, ["train", str(cfg), "--out", str(out), "--no-progress"])
    assert rc == 0, err
    assert "taking over the stale lock" in err
