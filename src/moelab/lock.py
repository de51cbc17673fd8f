"""An exclusive lock per output folder, held for a command's life (train, study, prepare, ...):
the file ``PARENT/.NAME.lock`` beside the folder, refreshed by a heartbeat thread, taken over
when stale. docs/training.md (*One process per folder*) is the one account of where it lives,
how it is created (a hard link, not flock: network filesystems), what it holds and when it is
stale. Taking over is itself guarded by an O_EXCL ``.break`` file, so two processes cannot both
break the same stale lock and then both believe they hold the new one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from moelab.errors import MoelabError
from moelab.io import atomic_dir, no_space_left
from moelab.paths import check_can_create

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0
STALE_S = 120.0  # twelve missed heartbeats: a busy filesystem is not mistaken for a dead holder

_held: dict[Path, FolderLock] = {}  # folder (resolved) -> this process's lock on it


def lock_path(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"


def holds_lock(folder: str | Path) -> bool:
    """Whether this process holds the lock on ``folder`` (cleanups of shared temporaries
    run only then: no other live process can own them)."""
    lock = _held.get(Path(folder).resolve())
    return lock is not None and not lock.lost


def _read(path: Path) -> dict[str, Any] | None:
    """The lock's record; None if it is gone; {} if it is unreadable or half-written."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pid_gone(pid: Any) -> bool:
    """Whether process ``pid`` (an int or a string of digits: a temporary name's suffix) no
    longer exists in this PID space; False for anything else and for another user's process."""
    if isinstance(pid, str) and pid.isdigit():
        pid = int(pid)
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def _age(path: Path, record: dict[str, Any]) -> float:
    """Seconds since the holder's last heartbeat (the file's mtime when the record is torn)."""
    beat = record.get("heartbeat")
    if not isinstance(beat, int | float):
        try:
            beat = path.stat().st_mtime
        except OSError:
            return 0.0
    return time.time() - float(beat)


def _pid_space() -> dict[str, Any]:
    """What makes a PID in a record comparable with ours: the host name, and on Linux the boot
    and the PID namespace. Containers may share a host name (host networking) but not their
    PIDs, and a restarted container may reuse the old holder's PID."""
    space: dict[str, Any] = {"host": socket.gethostname()}
    with contextlib.suppress(OSError):
        space["boot"] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        space["pidns"] = os.stat("/proc/self/ns/pid").st_ino
    return space


def is_stale(path: Path, record: dict[str, Any], stale_s: float = STALE_S) -> bool:
    """Stale when the heartbeat is older than ``stale_s``, or at once when the record's PID is
    one of ours (same host, boot and PID namespace) and that process is gone, or is this process
    (which does not hold it: a lock held here is found in ``_held`` first)."""
    here = _pid_space()
    if all(record.get(k) == v for k, v in here.items()):
        pid = record.get("pid")
        if pid == os.getpid() or pid_gone(pid):
            return True
    return _age(path, record) > stale_s


def describe(path: Path, record: dict[str, Any]) -> str:
    if not record:
        return f"an unreadable lock file {path}"
    what = record.get("command") or "moelab"
    since = record.get("since")
    since_s = "?"
    if isinstance(since, int | float):
        since_s = dt.datetime.fromtimestamp(since, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"moelab {what} (pid {record.get('pid')} on host {record.get('host')}, since {since_s}, "
        f"last heartbeat {_age(path, record):.0f} s ago)"
    )


class FolderLock:
    """Hold with ``with FolderLock(folder, "train"):``; refused with a MoelabError naming the
    holder when another live process has it."""

    def __init__(self, folder: str | Path, command: str, key: str = "out"):
        self.folder = Path(folder).resolve()
        self.path = lock_path(self.folder)
        self.command, self.key = command, key
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._made: list[Path] = []  # parent folders created for the lock, removed if left empty
        self._since = time.time()

    # -- the record -----------------------------------------------------------------------------

    def _record(self) -> bytes:
        rec = {
            **_pid_space(),
            "pid": os.getpid(),
            "command": self.command,
            "since": self._since,
            "heartbeat": time.time(),
            "token": self.token,
        }
        return (json.dumps(rec) + "\n").encode("utf-8")

    def _write_temp(self) -> Path:
        # Not named after the folder: a folder name near the length limit must still fit.
        tmp = self.path.with_name(f".moelab-lock-{self.token}")
        try:
            with open(tmp, "wb") as f:
                f.write(self._record())
                f.flush()
                os.fsync(f.fileno())
        except OSError:  # e.g. a full disk: created, but never written; leave nothing
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return tmp

    def _create(self) -> bool:
        """Create the lock file atomically; False if it exists."""
        tmp = self._write_temp()
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this filesystem: O_EXCL, then the content
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(self._record())
            except OSError:  # e.g. a full disk: an empty lock file would refuse for STALE_S
                with contextlib.suppress(OSError):
                    self.path.unlink()
                raise
            return True
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _break_stale(self, seen: dict[str, Any]) -> None:
        """Remove the lock judged stale, unless it changed since it was judged."""
        guard = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            # Another process is breaking it now, or died doing so long ago.
            with contextlib.suppress(OSError):
                if time.time() - guard.stat().st_mtime > STALE_S:
                    guard.unlink()
            return
        os.close(fd)
        try:
            now = _read(self.path)
            if now is not None and now == seen and is_stale(self.path, now):
                self.path.unlink(missing_ok=True)
        finally:
            guard.unlink(missing_ok=True)

    # -- acquire / release ----------------------------------------------------------------------

    def acquire(self) -> FolderLock:
        if self.folder in _held:  # e.g. two library calls on one folder from two threads
            what = _held[self.folder].command
            raise MoelabError(
                f"{{key}} {self.folder} is in use by this process ({what})", key=self.key
            )
        check_can_create(self.folder, self.key)  # a parent that is a file: the usual line
        self._make_parent()
        try:
            for _ in range(20):
                try:
                    created = self._create()
                except OSError as e:  # e.g. a name at the length limit, a read-only parent
                    if no_space_left(e):
                        raise MoelabError(
                            f"{{key}} {self.folder}: no space left on the device holding "
                            f"{self.path.parent} (for its lock file {self.path.name}); free "
                            "space and run the same command again",
                            key=self.key,
                        ) from None
                    raise MoelabError(
                        f"{{key}} {self.folder}: cannot create its lock file {self.path.name} "
                        f"({e.strerror or e}); choose a shorter name or a writable place",
                        key=self.key,
                    ) from None
                if created:
                    break
                record = _read(self.path)
                if record is None:
                    continue  # released between our attempt and the read: try again
                if is_stale(self.path, record):
                    log.warning(
                        f"note: {self.folder}: taking over the stale lock of "
                        f"{describe(self.path, record)}"
                    )
                    self._break_stale(record)
                    time.sleep(0.01)
                    continue
                raise MoelabError(
                    f"{{key}} {self.folder} is in use by {describe(self.path, record)}; wait "
                    f"for it to finish (a lock without a heartbeat for {STALE_S:.0f} s is taken "
                    "over)",
                    key=self.key,
                )
            else:
                raise MoelabError(
                    f"{{key}} {self.folder}: could not take its lock {self.path}", key=self.key
                )
        except BaseException:
            self._unmake_parent()
            raise
        _held[self.folder] = self
        self._thread = threading.Thread(target=self._beat, name="moelab-lock", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        _held.pop(self.folder, None)
        if not self.lost:
            rec = _read(self.path)
            if rec is not None and rec.get("token") == self.token:
                self.path.unlink(missing_ok=True)
        self._unmake_parent()

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            rec = _read(self.path)
            if rec is None or rec.get("token") != self.token:
                self.lost = True  # taken over after we missed heartbeats (a suspended process)
                log.warning(
                    f"warning: {self.folder}: this process lost its lock "
                    f"{self.path} (no heartbeat for {STALE_S:.0f} s); temporaries are left alone"
                )
                return
            with contextlib.suppress(OSError):
                tmp = self._write_temp()
                os.replace(tmp, self.path)

    # -- the parent folder ------------------------------------------------------------------------

    def _make_parent(self) -> None:
        missing = []
        p = self.folder.parent
        while not p.exists():
            missing.append(p)
            p = p.parent
        try:
            self.folder.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MoelabError(
                f"{{key}} {self.folder}: cannot create its parent folder ({e.strerror})",
                key=self.key,
            ) from None
        self._made = missing  # innermost first

    def _unmake_parent(self) -> None:
        """A refused command leaves no folder behind that only its lock needed."""
        for p in self._made:
            try:
                p.rmdir()
            except OSError:
                break
        self._made = []


folder_lock = FolderLock  # with folder_lock(folder, "train"): ...


def remove_stale_temps(folder: str | Path) -> None:
    """Delete ``.NAME.tmp-*`` folders beside ``folder`` (left by killed writers of it). Only the
    lock holder calls this: every writer of ``folder`` holds its lock, so none is live."""
    folder = Path(folder).resolve()
    if not holds_lock(folder):
        return
    for tmp in folder.parent.glob(f".{folder.name}.tmp-*"):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.is_file() or tmp.is_symlink():
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def locked_new_dir(out: str | Path, command: str, check) -> Iterator[Path]:
    """Build the new folder ``out`` under a temporary name (``moelab.io.atomic_dir``) while
    holding its lock: ``check(out)`` runs again under the lock (another process may have made
    ``out`` since the caller's first check), and the temporaries of killed earlier attempts
    are removed first (export and import leave ``.NAME.tmp-PID`` when killed)."""
    with folder_lock(out, command):
        check(Path(out))
        remove_stale_temps(out)
        with atomic_dir(out) as tmp:
            yield tmp
