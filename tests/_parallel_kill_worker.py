"""One rank of a 2-process job that trains an expert-parallel MoE layer until it is killed
(used by tests/test_parallel_failure.py). Touches READY_DIR/rank<r> once steps are running."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from moelab.config import ModelConfig
from moelab.errors import EXIT_USER_ERROR, MoelabError
from moelab.model.moe import MoeFFN
from moelab.parallel.expert_parallel import expert_parallel
from moelab.parallel.launch import fail_fast, setup_from_env, teardown
from moelab.parallel.options import ParallelConfig


def main() -> int:
    ready = Path(sys.argv[1])
    torch.set_num_threads(1)
    timeout_s = ParallelConfig().with_env()[0].timeout_s  # MOELAB_DIST_TIMEOUT_S
    try:
        topo = setup_from_env(n_experts=4, device="cpu", timeout_s=timeout_s)
        cfg = ModelConfig(d_model=16, n_heads=2, d_ffn=32, n_experts=4, capacity_factor=None)
        torch.manual_seed(0)
        layer = expert_parallel(
            MoeFFN(cfg, layer=0), ep=topo.ep, ep_rank=topo.ep_rank, ep_group=topo.ep_group
        )
        x_BTD = torch.randn(2, 8, 16)
        with fail_fast(topo.rank, topo.world, timeout_s):
            step = 0
            while True:
                layer(x_BTD).y_BTD.square().sum().backward()
                step += 1
                if step == 3:
                    (ready / f"rank{topo.rank}").touch()
    except MoelabError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    finally:
        teardown()


if __name__ == "__main__":
    sys.exit(main())
