"""Step-level balancing that needs more than one forward: the trainer's two calls, each
explained in docs/model.md (*Beyond the paper*): :func:`global_batch_counts` (``balance_scope:
global_batch`` with several micro-batches: the whole step's rank-0 counts before its
micro-batches, Qiu et al. 2025) and :func:`update_balance_bias` (``balance: bias``, Wang et al.
2024: after each optimizer step, the selection bias moved by the step's loads summed over every
rank, so all ranks, expert-parallel ones included, hold the same bias).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from moelab.model.moe import MoeFFN


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def moe_layers(model: nn.Module) -> list[MoeFFN]:
    return [m for m in model.modules() if isinstance(m, MoeFFN)]


def _plain_forward(model: nn.Module, tokens_BT: torch.Tensor) -> object:
    return model(tokens_BT, return_logits=False, moe_stats=False)


def clear_global_counts(model: nn.Module) -> None:
    """Forget the counts :func:`global_batch_counts` set: they belong to one step only (a
    later step of one micro-batch sums its own over the ranks)."""
    for m in moe_layers(model):
        m.balance_counts_E = None


def needs_global_counts(model: nn.Module) -> bool:
    """Whether the model has a layer with the global-batch balancing scope."""
    return any(m.cfg.balance_scope == "global_batch" for m in moe_layers(model))


@torch.no_grad()
def global_batch_counts(
    model: nn.Module,
    micro_inputs: Iterable[torch.Tensor],
    forward: Callable[[nn.Module, torch.Tensor], object] | None = None,
    group: dist.ProcessGroup | None = None,
) -> None:
    """Count the rank-0 choices of every global-scope MoE layer over ``micro_inputs`` (this
    rank's micro-batches of the coming step, ``(B, T)`` token ids) and sum them over ``group``
    (default: every rank); each layer then uses them in its loss until the next call.

    A forward pass without gradients per micro-batch (about a third of a training step's
    compute), in training mode and with the random state restored afterwards, so dropout
    draws the same masks in the real pass and the counts are the ones it routes by.
    ``forward(model, tokens_BT)`` runs the model (default ``model(tokens_BT)``; give the
    trainer's autocast around it)."""
    layers = [m for m in moe_layers(model) if m.cfg.balance_scope == "global_batch"]
    micro_inputs = list(micro_inputs)
    if not layers or not micro_inputs:
        return
    for m in layers:
        m.balance_counts_E = None
        # A plain tensor where the routing counts live: under FSDP the router weight is a
        # DTensor, and a counter made like it could not take the plain counts.
        m.top1_sum_E = torch.zeros(m.n_experts, dtype=torch.int64, device=micro_inputs[0].device)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            for tokens_BT in micro_inputs:
                (forward or _plain_forward)(model, tokens_BT)
        for m in layers:
            counts = m.top1_sum_E
            if _distributed():
                dist.all_reduce(counts, group=group)
            m.balance_counts_E = counts
    finally:
        for m in layers:
            m.top1_sum_E = None


@torch.no_grad()
def update_balance_bias(
    model: nn.Module, group: dist.ProcessGroup | None = None, *, step_taken: bool = True
) -> None:
    """After an optimizer step: for every ``balance: bias`` MoE layer, sum the assignments per
    expert routed since the last call (every micro-batch; over ``group``, default every rank),
    move its ``score_bias`` by ``bias_update_rate * sign(mean load - load)`` (underloaded
    experts up, overloaded down) and start counting again. Every rank computes the same
    update from the same summed loads, so the biases stay identical (expert parallelism too:
    each rank keeps the whole router and bias). ``step_taken=False`` (the step was skipped as
    non-finite) only clears the counts, as the weights did not move either. Collective when
    distributed: every rank calls it."""
    for m in moe_layers(model):
        if m.score_bias is None:
            continue
        if not step_taken:
            m.load_E.zero_()
            continue
        load = m.load_E
        if _distributed():
            dist.all_reduce(load, group=group)
        load = load.to(torch.float32)
        m.score_bias += m.cfg.bias_update_rate * torch.sign(load.mean() - load)
        m.load_E.zero_()
