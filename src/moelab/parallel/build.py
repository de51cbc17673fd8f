"""Per-rank construction, so no rank ever holds the whole model: :func:`build_parallel_model`
builds it on the meta device, makes it parallel (:func:`moelab.parallel.fsdp.parallelize`),
materialises each rank's shards with ``to_empty`` and gives them the values of the same slices
of the one-process initialisation (:func:`moelab.model.init.init_shards`). docs/distributed.md
(*Per-rank construction*) is the one account of why the values match at any layout and what
it costs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from moelab.config import ModelConfig
from moelab.model.init import init_buffers, init_plan, init_shards
from moelab.model.transformer import LanguageModel
from moelab.parallel.fsdp import parallelize
from moelab.parallel.launch import Topology
from moelab.parallel.options import ParallelConfig


def _local_and_offset(p: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """This rank's piece of parameter ``p`` and where it starts in the full tensor."""
    if not isinstance(p, DTensor):
        return p.data, (0,) * p.dim()
    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    local = p.to_local()
    assert tuple(local.shape) == tuple(shape), (tuple(local.shape), tuple(shape))
    return local, tuple(offset)


def build_parallel_model(
    cfg: ModelConfig, seed: int, topo: Topology, par: ParallelConfig | None = None
) -> nn.Module:
    """The model of ``cfg``, parallelised over ``topo`` and initialised from ``seed`` with
    each rank's shards only (see the module docstring). Collective."""
    cfg.validate()
    with torch.device("meta"):
        model = LanguageModel(cfg)
    # Shapes, rules and the order init_weights draws in: the plain model's (before parallelize).
    plan = init_plan(model, cfg)
    parallelize(model, topo, par or ParallelConfig())
    model.to_empty(device=topo.device)
    params = dict(model.named_parameters())
    shards = {name: _local_and_offset(params[name]) for name in plan}
    on_cpu = {
        name: (local if local.device.type == "cpu" else torch.empty(local.shape), offset)
        for name, (local, offset) in shards.items()
    }
    init_shards(cfg, plan, on_cpu, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for name, (local, _) in shards.items():
            if local is not on_cpu[name][0]:
                local.copy_(on_cpu[name][0])
    init_buffers(model, topo.device)
    return model
