"""File I/O. Atomic writes: a reader sees the old file or the complete new one, never half of
one (write to a temporary name in the same folder, fsync, then ``os.replace``, atomic on POSIX).
And the one SHA-256 of a file, read in chunks.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# "No space left" (ENOSPC) and "disk quota exceeded" (EDQUOT) mean the same to a user: free
# space, then rerun. Rust writers (safetensors, tokenizers) raise their own errors that only
# quote the OS message; torch.save wraps the OSError of a Python file in a RuntimeError.
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_TEXTS = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes, read ``chunk`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def no_space_left(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from or during) says the disk is full."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if any(text in str(e) for text in _FULL_TEXTS):
            return True
        e = e.__cause__ or e.__context__
    return False


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_beside(path: str | Path) -> tuple[Path, Path]:
    """``(path, .NAME.tmp-<pid>)`` with the parent folder made and nothing standing at the
    temporary name: what a killed earlier process of the same PID (or a crafted folder) left
    there is removed, a link itself (never its target), a file or a folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.is_file():
        tmp.unlink()
    elif tmp.is_dir():
        shutil.rmtree(tmp)
    return path, tmp


def _umask() -> int:
    """The process's umask, read without setting it where Linux allows (os.umask is the only
    portable getter, and it briefly changes the mask for every thread)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _readable_like_the_rest(path: Path) -> None:
    """Give a file the permissions a plain ``open()`` would: safetensors' writer creates
    ``model.safetensors`` 0600, unreadable to the group where every other file is 0644."""
    mode = path.stat().st_mode & 0o7777
    want = mode | (0o666 & ~_umask())
    if want != mode:
        os.chmod(path, want)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        # O_EXCL: never write through a link planted at the temporary name (a crafted folder
        # may hold one for a range of PIDs); os.replace then swaps the final name itself, never
        # a link's target.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(tmp, flags, 0o666), "wb") as f:
            f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_path(path: str | Path) -> contextlib.AbstractContextManager[Path]:
    """Yield a temporary path for a writer that needs a filename (safetensors, numpy);
    renamed over ``path`` only if the block finishes without an exception."""
    return _atomic(path, folder=False)  # the writer opens it by name: no link may stand there


def atomic_dir(path: str | Path) -> contextlib.AbstractContextManager[Path]:
    """Yield a temporary folder; on success it is renamed to ``path`` (which must not exist)."""
    return _atomic(path, folder=True)


@contextlib.contextmanager
def _atomic(path: str | Path, folder: bool) -> Iterator[Path]:
    path, tmp = temp_beside(path)
    if folder:
        tmp.mkdir()  # fails rather than follow anything that appeared at the name since
    try:
        yield tmp
        for file in tmp.rglob("*") if folder else [tmp]:
            if file.is_file():
                _readable_like_the_rest(file)
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
