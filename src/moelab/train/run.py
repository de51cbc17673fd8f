"""``train``: one run to its budget, on this process or, under torchrun, as this process's rank
of the job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moelab.parallel.launch import env_world, fail_fast, setup_from_env, teardown
from moelab.train.config import RunConfig, with_parallel_env
from moelab.train.trainer import Trainer


def train(run_cfg: RunConfig, run_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Train ``run_cfg`` in ``run_dir`` until its budget is reached (resuming from the newest
    valid checkpoint there) and return the summary also written to ``done.json``.

    Under torchrun (``WORLD_SIZE`` > 1) this process trains as its rank of the job, spread as
    ``run_cfg.parallel`` says: the process group and ("edp", "ep") mesh are set up here, the
    same :class:`Trainer` runs on every rank, and a failed collective ends every rank with one
    line. The environment's overrides of the parallel section (MOELAB_EP, MOELAB_EXPERT_GRAD,
    MOELAB_FSDP_BF16, MOELAB_DIST_TIMEOUT_S) are applied here and stored in config.yaml. Every
    rank returns the summary; rank 0 writes the files."""
    run_cfg = with_parallel_env(run_cfg)
    if env_world() == 1:
        return Trainer(run_cfg, run_dir, progress=progress).run()
    par = run_cfg.parallel
    topo = setup_from_env(
        run_cfg.model.n_experts, ep=par.ep, device=run_cfg.train.device, timeout_s=par.timeout_s
    )
    try:
        with fail_fast(topo.rank, topo.world, par.timeout_s):
            return Trainer(run_cfg, run_dir, progress=progress, topo=topo).run()
    finally:
        teardown()
