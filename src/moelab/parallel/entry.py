"""``torchrun ... -m moelab train CONFIG.yaml``: one rank's share of a distributed run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moelab.parallel.launch import fail_fast, setup_from_env, teardown
from moelab.parallel.options import ParallelOptions


def train_distributed(
    run_cfg, run_dir: str | Path, *, progress: bool = True, options: ParallelOptions | None = None
) -> dict[str, Any]:
    """Train ``run_cfg`` as this process's rank of the torchrun job in the environment
    (``WORLD_SIZE`` > 1): FSDP2 for the dense parts, expert parallelism for the MoE layers.
    Every rank returns the run summary; rank 0 writes the files."""
    from moelab.parallel.trainer import DistributedTrainer

    options = options or ParallelOptions.from_env()
    topo = setup_from_env(
        run_cfg.model.n_experts,
        ep=options.ep,
        device=run_cfg.train.device,
        timeout_s=options.timeout_s,
    )
    try:
        with fail_fast(topo.rank, topo.world, options.timeout_s):
            trainer = DistributedTrainer(run_cfg, run_dir, topo, progress=progress, options=options)
            return trainer.run()
    finally:
        teardown()
