"""Runs of a study that diverged: recorded, left out of the fits, and not retried each rerun.

A run whose training stops with too many non-finite losses in a row (``TrainingDiverged``)
would otherwise abort the whole study, and every rerun would train it again into the same
divergence (training is deterministic). Instead ``RUN/diverged.json`` records the trainer's
message; the study goes on, later invocations skip the run, and the results leave it out (and
list it). Deleting the file retries the run (say, after lowering its learning rate).
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
