"""The run folder: what it holds, and whether a config may train (or resume) in it.

``RUN_DIR/config.yaml`` (resolved config), ``tokenizer.json`` (copied from the data, so a run is
self-contained), ``metrics.jsonl``, ``checkpoints/``, ``done.json`` once the budget is reached.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from moelab.config import load_yaml
from moelab.errors import MoelabError
from moelab.io import atomic_write_bytes, atomic_write_text
from moelab.lock import pid_gone
from moelab.paths import check_can_create
from moelab.train.checkpoint import CHECKPOINTS
from moelab.train.config import RunConfig, config_differences, load_run_config
from moelab.train.metrics import METRICS

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
TOKENIZER = "tokenizer.json"
DONE = "done.json"


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run was started with (no data access needed); a data.dir stored
    relative to the run folder (study runs, see stored_config) is made absolute again."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise MoelabError(f"{run_dir}: not a moelab run folder (no {CONFIG})")
    return load_run_config(with_data_dir_from(load_yaml(path), Path(run_dir)), check_data=False)


def with_data_dir_from(raw: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A run's stored config (plain data) with a relative data.dir taken relative to the run
    folder holding it, not to the working directory."""
    data = raw.get("data") if isinstance(raw, dict) else None
    where = data.get("dir") if isinstance(data, dict) else data
    if not isinstance(where, str) or not where or Path(where).expanduser().is_absolute():
        return raw
    absolute = str((run_dir / where).resolve())
    new_data = {**data, "dir": absolute} if isinstance(data, dict) else absolute
    return {**raw, "data": new_data}


# A run folder RUNS/NAME of a study folder (the one holding this file, see moelab.study.plan.layout)
STUDY_MARKER = "study.yaml"


def stored_config(cfg: RunConfig, run_dir: Path) -> RunConfig:
    """``cfg`` as config.yaml stores it: a study run whose data lives inside the study folder
    keeps data.dir relative to the run folder (``../../data``), so the whole study folder can
    be moved and resumed. Elsewhere the path stays absolute: a run folder moved on its own
    still finds its data."""
    study = run_dir.absolute().parent.parent
    if run_dir.absolute().parent.name != "runs" or not (study / STUDY_MARKER).is_file():
        return cfg
    data = Path(cfg.data.dir).resolve()
    if not data.is_relative_to(study.resolve()):
        return cfg
    relative = os.path.relpath(data, run_dir.resolve())
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=relative))


def claim_run_dir(cfg: RunConfig, run_dir: Path, *, write: bool) -> bool:
    """Check that ``cfg`` may train in ``run_dir``; return True when the folder already holds
    this run (resume). A folder holding another run, or unrelated files, is refused.
    With ``write`` (rank 0) the resolved config and tokenizer are written."""
    check_can_create(run_dir)
    existing = None
    if run_dir.exists():
        if not run_dir.is_dir():
            raise MoelabError(f"--out {run_dir}: exists and is not a folder")
        check_no_links_out(run_dir)
        if (run_dir / CONFIG).is_file():
            existing = read_run_config(run_dir)
        elif any(run_dir.iterdir()):
            raise MoelabError(
                f"--out {run_dir}: folder is not empty and holds no moelab run; "
                "choose a new or empty folder"
            )
    if existing is not None:
        diffs = config_differences(existing, cfg)
        if diffs and not has_checkpoints(run_dir) and not (run_dir / DONE).exists():
            # A start that never reached its first checkpoint has nothing to resume.
            if write:
                log.warning(
                    f"note: {run_dir} held a run with no checkpoint yet; starting over with the "
                    "new config"
                )
            diffs, existing = [], None
        if diffs:
            more = f"; ... ({len(diffs)} in all)" if len(diffs) > 8 else ""
            shown = "; ".join(diffs[:8]) + more
            raise MoelabError(
                f"{run_dir} holds a run with a different config ({shown}); "
                "use a new --out folder, or the run's own config.yaml to resume it"
            )
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        # operational keys (and where the data lives) may change
        atomic_write_text(run_dir / CONFIG, stored_config(cfg, run_dir).to_yaml())
        tok = Path(cfg.data.dir) / TOKENIZER
        if tok.is_file():
            atomic_write_bytes(run_dir / TOKENIZER, tok.read_bytes())
    return existing is not None


# What the trainer writes in a run folder: none may lead outside it.
WRITTEN = (CONFIG, TOKENIZER, METRICS, DONE, CHECKPOINTS, "tensorboard")


def check_no_links_out(run_dir: Path) -> None:
    """Refuse (before any write) a run folder whose entry the trainer writes is a symbolic
    link leading outside the folder, or nowhere: a crafted or copied folder must not make
    training create or append to files elsewhere. A link within the folder is fine."""
    root = run_dir.resolve()
    for name in WRITTEN:
        entry = run_dir / name
        if not entry.is_symlink():
            continue
        target = entry.resolve()
        if not target.is_relative_to(root) or not target.exists():
            where = "outside the run folder" if not target.is_relative_to(root) else "nowhere"
            raise MoelabError(
                f"{entry} is a link to {target} ({where}); moelab writes only inside the run "
                "folder: remove the link, or replace it by the file or folder itself"
            )


def has_checkpoints(run_dir: Path) -> bool:
    root = run_dir / CHECKPOINTS
    return root.is_dir() and any(p.name.startswith("step_") for p in root.iterdir())


# what a complete done.json must hold (the train command prints them)
_DONE_NUMBERS = ("steps", "tokens", "flops")


def read_done(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary; None when absent or damaged (not JSON, not an object, a number
    missing): a damaged one is not trusted to say the run is complete, so the trainer finishes
    the run again from its final checkpoint and rewrites it."""
    path = run_dir / DONE
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return None
    if not isinstance(done, dict):
        return None
    for key in _DONE_NUMBERS:
        if not isinstance(done.get(key), int | float) or isinstance(done.get(key), bool):
            return None
    return done


def clear_stale(run_dir: Path, *, locked: bool) -> None:
    """Remove leftovers of an interrupted checkpoint write (``.step_*.tmp-PID`` folders).
    ``locked``: this process holds the run folder's lock, so no other live process can own
    one and all go. Without it (a distributed job, whose ranks share the folder unlocked) only
    those whose PID is gone from this host are removed."""
    root = run_dir / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".") and ".tmp-" in p.name:
                if locked or pid_gone(p.name.rsplit("-", 1)[-1]):
                    shutil.rmtree(p, ignore_errors=True)
