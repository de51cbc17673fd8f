"""``train``: one run to its budget, on this process or, under torchrun, as this process's rank
of the job."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from moelab.train.config import RunConfig, with_parallel_env
from moelab.train.trainer import Trainer


def train(run_cfg: RunConfig, run_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Train ``run_cfg`` in ``run_dir`` until its budget is reached (resuming from the newest
    valid checkpoint there) and return the summary also written to ``done.json``.

    Under torchrun (``WORLD_SIZE`` > 1) this process trains as its rank of the job
    (:func:`moelab.train.distributed.train_distributed`), spread as ``run_cfg.parallel`` says.
    The environment's overrides of that section (MOELAB_EP, MOELAB_EXPERT_GRAD,
    MOELAB_FSDP_BF16, MOELAB_DIST_TIMEOUT_S) are applied here and stored in config.yaml."""
    run_cfg = with_parallel_env(run_cfg)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # imported here so that a one-process run does not pay for importing FSDP and DCP
        from moelab.train.distributed import train_distributed

        return train_distributed(run_cfg, run_dir, progress=progress)
    return Trainer(run_cfg, run_dir, progress=progress).run()
