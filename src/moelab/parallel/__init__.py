"""Scale-out with PyTorch's own engine: torchrun, DeviceMesh, FSDP2, expert parallelism over
all-to-all, torch.distributed.checkpoint. See docs/distributed.md.

Names are imported on first use, so ``moelab.parallel.launch.env_world()`` (asked by every
``moelab train``) does not pay for importing FSDP and DCP in a single-process run.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "ExpertExchange": "expert_parallel",
    "apply_expert_parallel": "expert_parallel",
    "expert_parallel": "expert_parallel",
    "is_expert_parallel": "expert_parallel",
    "expert_grad_divisor": "expert_parallel",
    "ParallelConfig": "options",
    "checkpoint_blocks": "checkpointing",
    "Topology": "launch",
    "env_world": "launch",
    "fail_fast": "launch",
    "setup_from_env": "launch",
    "teardown": "launch",
    "consolidate": "dcp",
    "load_sharded": "dcp",
    "save_sharded": "dcp",
    "grad_norm": "fsdp",
    "parallelize": "fsdp",
    "build_parallel_model": "build",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'moelab.parallel' has no attribute {name!r}")
    return getattr(importlib.import_module(f"moelab.parallel.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
