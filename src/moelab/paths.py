"""Checks on output paths, done before any work so a refusal leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

from moelab.errors import MoelabError


def check_can_create(path: str | Path, flag: str = "--out") -> None:
    """Refuse (one line) an output folder that cannot be created because an ancestor is a
    regular file. ``path`` itself may exist; the caller checks what it holds."""
    path = Path(path)
    for parent in path.absolute().parents:
        if parent.is_dir():
            return
        if parent.exists() or parent.is_symlink():
            raise MoelabError(
                f"{flag} {path}: cannot create it ({parent} is a file, not a folder); "
                "choose another path"
            )
