"""Wrap a model for data + expert parallelism (:func:`parallelize`): expert parallelism for
the MoE layers, FSDP2 (``fully_shard``, one unit per block plus the root) for the dense parts.
docs/distributed.md (*Layout*) is the one account of the layout and of how gradients are
normalised. Expert weights become DTensors of the full ``(E, ...)`` shape placed
``(Replicate(), Shard(0))`` on the ``("edp", "ep")`` mesh (split by expert over the group, one
copy per group), which FSDP ignores; an MoE model's dense parameters use the same mesh (HSDP),
so the gradient norm and AdamW treat every parameter together.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard

from moelab.model import MoeFFN
from moelab.parallel.checkpointing import checkpoint_blocks
from moelab.parallel.expert_parallel import (
    apply_expert_parallel,
    expert_grad_divisor,
    is_expert_parallel,
)
from moelab.parallel.launch import Topology
from moelab.parallel.options import ParallelConfig


def expert_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in model.modules() if is_expert_parallel(m) for p in m.experts.parameters()]


def _distribute_experts(layers: list[MoeFFN], topo: Topology) -> None:
    """Turn each rank's local expert slices into DTensors of the global shape."""
    placements = [Replicate(), Shard(0)]
    for layer in layers:
        experts = layer.experts
        for name, p in list(experts.named_parameters()):
            dt = DTensor.from_local(p.detach(), topo.mesh, placements, run_check=False)
            setattr(experts, name, nn.Parameter(dt, requires_grad=p.requires_grad))


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parallelize(model: nn.Module, topo: Topology, cfg: ParallelConfig) -> nn.Module:
    """Apply expert parallelism and FSDP2 to ``model`` in place, as ``cfg`` (the run config's
    ``parallel:`` section) says, and return it: the one place a model is made parallel (as
    torchtitan's ``parallelize_*``). Works on a model built on the meta device (nothing is read
    from its weights; see :mod:`moelab.parallel.build`) and on a built one (identical on every
    rank). ``cfg.param_dtype`` bf16 runs the dense parts in bf16 under FSDP2 with fp32 master
    weights (experts then compute in the dtype of their inputs); ``cfg.reduce_dtype`` is the
    dtype FSDP2 reduces gradients in; ``cfg.activation_checkpointing`` makes every block
    recompute its forward in backward (:mod:`moelab.parallel.checkpointing`)."""
    divisor = expert_grad_divisor(cfg.expert_grad, topo.world)
    # New local expert weights are made where the model is (on meta: nothing allocated).
    where = next(model.parameters()).device
    with torch.device(where):
        layers = apply_expert_parallel(
            model,
            ep=topo.ep,
            ep_rank=topo.ep_rank,
            ep_group=topo.ep_group if topo.ep > 1 else None,
            edp_group=topo.edp_group if topo.edp > 1 else None,
            grad_divisor=divisor,
        )
    if layers:
        _distribute_experts(layers, topo)
    mesh = topo.mesh if layers else topo.flat_mesh
    ignored = set(expert_parameters(model))
    param_dtype = None if cfg.param_dtype == "fp32" else _DTYPES[cfg.param_dtype]
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=_DTYPES[cfg.reduce_dtype])
    if cfg.activation_checkpointing:  # before fully_shard: FSDP's hooks stay outside the recompute
        checkpoint_blocks(model)
    blocks = getattr(model, "layers", [])
    for block in blocks:
        fully_shard(
            block,
            mesh=mesh,
            mp_policy=mp,
            ignored_params={p for p in block.parameters() if p in ignored} or None,
        )
    fully_shard(model, mesh=mesh, mp_policy=mp, ignored_params=ignored or None)
    return model


def grad_norm(params: list[nn.Parameter]) -> torch.Tensor:
    """Global L2 norm of the gradients of (possibly sharded) parameters, as a plain tensor
    with the same value on every rank."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    total = torch.nn.utils.get_total_norm(grads)
    return total.full_tensor() if isinstance(total, DTensor) else total
