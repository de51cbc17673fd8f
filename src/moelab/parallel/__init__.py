"""Scale-out with PyTorch's own engine: torchrun, DeviceMesh, FSDP2, expert parallelism over
all-to-all, torch.distributed.checkpoint. See docs/distributed.md.

Names are imported on first use, so ``moelab.parallel.launch.env_world()`` (asked by every
``moelab train``) does not pay for importing FSDP and DCP in a single-process run.
"""

from __future__ import annotations

from moelab.lazy import lazy_names

__all__, __getattr__, __dir__ = lazy_names(
    __name__,
    {
        "expert_parallel": (
            "ExpertExchange",
            "apply_expert_parallel",
            "expert_parallel",
            "is_expert_parallel",
            "expert_grad_divisor",
        ),
        "options": ("ParallelConfig",),
        "checkpointing": ("checkpoint_blocks",),
        "launch": ("Topology", "env_world", "fail_fast", "setup_from_env", "teardown"),
        "dcp": ("consolidate", "load_sharded", "save_sharded"),
        "fsdp": ("grad_norm", "parallelize"),
        "build": ("build_parallel_model",),
    },
)
