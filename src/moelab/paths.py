"""Checks on output paths, done before any work so a refusal leaves nothing behind."""

from __future__ import annotations

import stat
from pathlib import Path

from moelab.errors import MoelabError


def check_can_create(path: str | Path, key: str = "out") -> None:
    """Refuse (one line) an output folder that cannot be created because an ancestor is a
    regular file. ``path`` itself may exist; the caller checks what it holds. ``key``: the
    argument that named ``path``."""
    path = Path(path)
    for parent in path.absolute().parents:
        # One stat per ancestor: with is_dir() then exists(), a folder another process (a
        # study worker) created between the two calls read as "a file".
        try:
            is_folder = stat.S_ISDIR(parent.stat().st_mode)
        except (FileNotFoundError, NotADirectoryError):
            if not parent.is_symlink():
                continue  # absent, or under a file that the loop reaches next
            is_folder = False  # a dangling link
        if not is_folder:
            raise MoelabError(
                f"{{key}} {path}: cannot create it ({parent} is a file, not a folder); "
                "choose another path",
                key=key,
            )
        return  # the nearest existing ancestor is a folder
