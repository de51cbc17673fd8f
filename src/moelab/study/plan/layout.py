"""Where a study keeps things, and how to tell what state a run is in.

    DIR/study.yaml            the resolved study config (what ran)
    DIR/plan.json             the plan (params, tokens, FLOPs, estimates per run)
    DIR/data/                 prepared data, when the study prepared it
    DIR/configs/<name>.yaml   a run's config, for runs launched as `moelab train` (torchrun,
                              Slurm array tasks)
    DIR/runs/<name>/          one trainer run directory per run (config.yaml, metrics.jsonl,
                              checkpoints/, done.json) plus study_eval.json once evaluated
    DIR/results.csv, .json    the results table
    DIR/fits.json             fitted curves and speedups
    DIR/report.md, .html      the report; DIR/plots/*.png its figures

A run is finished when ``done.json`` exists and ``study_eval.json`` was written for the same
evaluation settings; rerunning a study skips finished runs, evaluates trained ones and lets the
trainer resume interrupted ones from their newest checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Any

from moelab.study.plan.config import StudyEval

STUDY_EVAL = "study_eval.json"


class RunState(Enum):
    NEW = "new"  # nothing on disk
    INTERRUPTED = "interrupted"  # has a run folder but no done.json: the trainer resumes it
    TRAINED = "trained"  # done.json, but not evaluated with the current settings
    FINISHED = "finished"  # done.json and study_eval.json for the current settings


def runs_dir(out_dir: Path) -> Path:
    return out_dir / "runs"


def run_dir(out_dir: Path, name: str) -> Path:
    return runs_dir(out_dir) / name


def configs_dir(out_dir: Path) -> Path:
    return out_dir / "configs"


def eval_key(ev: StudyEval) -> str:
    """Hash of the evaluation settings: a change re-evaluates runs but never retrains them."""
    blob = json.dumps(asdict(ev), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_study_eval(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / STUDY_EVAL).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError):  # none yet, or damaged
        return None


def run_state(path: Path, key: str) -> RunState:
    if (path / "done.json").is_file():
        ev = read_study_eval(path) or {}
        return RunState.FINISHED if ev.get("eval_key") == key else RunState.TRAINED
    if path.is_dir() and any(path.iterdir()):
        return RunState.INTERRUPTED
    return RunState.NEW
