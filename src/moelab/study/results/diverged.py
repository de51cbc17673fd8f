"""Runs of a study that diverged: ``RUN/diverged.json`` (the trainer's message) keeps them out of
the fits and from being retrained each rerun (docs/study.md#locks-preemption-and-diverged-runs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moelab.io import atomic_write_json

DIVERGED = "diverged.json"


def record_divergence(path: Path, run: str, error: BaseException) -> str:
    """Write ``path/diverged.json``; return the line the study prints."""
    atomic_write_json(path / DIVERGED, {"run": run, "message": str(error)})
    return (
        f"{run} diverged ({error}); recorded in {path / DIVERGED}, left out of the results; "
        "the study goes on (delete that file to retry the run)"
    )


def read_divergence(path: Path) -> dict[str, Any] | None:
    """The record of a diverged run, or None. A damaged record still marks the run diverged:
    the file is only ever written when the trainer said so."""
    f = path / DIVERGED
    if not f.is_file():
        return None
    try:
        rec = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        rec = None
    return rec if isinstance(rec, dict) else {"run": path.name, "message": "unreadable record"}


def diverged_runs(runs_root: Path, names: list[str]) -> dict[str, str]:
    """{run name: the trainer's message} for the diverged runs among ``names``."""
    out = {}
    for name in names:
        rec = read_divergence(runs_root / name)
        if rec is not None:
            out[name] = str(rec.get("message") or "")
    return out
