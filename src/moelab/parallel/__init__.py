"""Scale-out with PyTorch's own engine: torchrun, DeviceMesh, FSDP2, expert parallelism over
all-to-all, torch.distributed.checkpoint. See docs/distributed.md."""

from moelab.parallel.dcp import consolidate, load_sharded, read_sharded_weights, save_sharded
from moelab.parallel.entry import train_distributed
from moelab.parallel.expert_parallel import (
    ExpertParallelMoeFFN,
    apply_expert_parallel,
    expert_grad_divisor,
)
from moelab.parallel.fsdp import grad_norm, wrap_for_parallel
from moelab.parallel.launch import Topology, env_world, fail_fast, setup_from_env, teardown
from moelab.parallel.options import ParallelOptions

__all__ = [
    "ExpertParallelMoeFFN",
    "ParallelOptions",
    "Topology",
    "apply_expert_parallel",
    "consolidate",
    "env_world",
    "expert_grad_divisor",
    "fail_fast",
    "grad_norm",
    "load_sharded",
    "read_sharded_weights",
    "save_sharded",
    "setup_from_env",
    "teardown",
    "train_distributed",
    "wrap_for_parallel",
]
