"""Load a trained model from a run folder: the newest valid checkpoint (or a given step)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from moelab.errors import MoelabError
from moelab.model import LanguageModel, build_model
from moelab.train import checkpoint as ckpt_io
from moelab.train.config import RunConfig
from moelab.train.rundir import read_run_config

log = logging.getLogger(__name__)


def load_model(
    run_dir: str | Path,
    step: int | None = None,
    device: str | torch.device = "cpu",
    *,
    announce: bool = False,
) -> tuple[LanguageModel, RunConfig, dict[str, Any]]:
    """(model in eval mode on ``device``, the run's config, the checkpoint's meta.json).

    Checkpoints that fail their checksums are skipped (a note on stderr when an older valid one
    is used; otherwise one MoelabError names them all); with ``step`` only that checkpoint is
    considered. The returned meta's ``step`` is the checkpoint's own (not its folder name's):
    commands print it, so no reader silently uses another step than the user thinks. With
    ``announce`` it is also said on stderr at once (library use; a command says it with its
    result, keeping a later refusal to one stderr line)."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    found, skipped = ckpt_io.newest_valid(run_dir, step)
    if found is None:
        fix = (
            "pick another --step or re-train it"
            if step is not None
            else f"train it (again) with moelab train --out {run_dir}"
        )
        raise MoelabError(f"{ckpt_io.no_valid_checkpoint(run_dir, step, skipped)}; {fix}")
    model = build_model(cfg.model, seed=0)
    ckpt_io.load_weights(found.path, model)
    # Only now (a usable checkpoint exists) are the skipped newer ones worth a note.
    for bad, reason in skipped:
        log.warning(f"checkpoint {bad.path.name} is not valid ({reason}); skipping it")
    meta = ckpt_io.read_meta(found.path)
    if announce:
        what = f"{found.path.name} (step {found.step})"
        log.info(f"{run_dir}: loaded checkpoint {what}")
    return model.to(device).eval(), cfg, meta
