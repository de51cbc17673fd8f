"""One optimizer step: forward + backward over the micro-batches, a finiteness check of the
loss and gradient norm (the NaN guard), optional clipping, and the update.

A plain function so the trainer, the distributed layer and the throughput benchmark all run
the very same step. The model is called as ``model(inputs_BT, targets_BT=targets_BT)`` and must
return an object with ``aux_loss``, ``z_loss``, ``moe_stats`` and either ``ce_loss`` (the mean
cross-entropy, as moelab's model computes it through its fused head) or ``logits_BTV`` (then
the loss is taken from the logits here).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from moelab.model.balance import (
    clear_global_counts,
    global_batch_counts,
    needs_global_counts,
    update_balance_bias,
)


@dataclass
class StepResult:
    updated: bool  # False: loss or gradient was not finite and the update was skipped
    ce_loss: torch.Tensor  # mean over the step's tokens (0-dim, on the device)
    aux_loss: torch.Tensor
    z_loss: torch.Tensor
    grad_norm: torch.Tensor


def train_step(
    model: nn.Module,
    batch_BT1: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    *,
    micro_batch: int,
    aux_loss_weight: float = 0.0,
    z_loss_weight: float = 0.0,
    clip: float | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    on_moe_stats: Callable[[list], None] | None = None,
    all_finite: Callable[[torch.Tensor], bool] = lambda ok: bool(ok),
    grad_norm: Callable[[list[torch.nn.Parameter]], torch.Tensor] | None = None,
) -> StepResult:
    """``batch_BT1`` holds this rank's rows, ``(B, T + 1)``: inputs ``[:, :-1]``, targets
    ``[:, 1:]``; it is split into micro-batches of ``micro_batch`` rows whose gradients add up.
    ``all_finite`` turns the local finiteness flag into one decision for all ranks (the one
    host sync of the step); ``grad_norm`` computes the global gradient norm (default: over the
    local ``.grad`` tensors). MoE balancing that spans the step (moelab.model.balance): a
    global-batch scope with several micro-batches counts the step's routing first; a selection
    bias moves after the update (collective when distributed: every rank runs the step)."""
    micros = batch_BT1.split(micro_batch)
    n = len(micros)
    counted = n > 1 and needs_global_counts(model)  # balance_scope global_batch
    if counted:  # the step's counts before any micro-batch's loss

        def count(mod: nn.Module, tokens_BT: torch.Tensor):
            with autocast():
                return mod(tokens_BT, return_logits=False, moe_stats=False)

        global_batch_counts(model, [m[:, :-1] for m in micros], forward=count)
    device = batch_BT1.device
    ce_sum = torch.zeros((), dtype=torch.float32, device=device)
    aux_sum, z_sum = torch.zeros_like(ce_sum), torch.zeros_like(ce_sum)
    finite = torch.ones((), dtype=torch.bool, device=device)
    try:
        for micro in micros:
            inputs_BT, targets_BT = micro[:, :-1], micro[:, 1:]
            with autocast():
                out = model(inputs_BT, targets_BT=targets_BT)
                ce = out.ce_loss
                if ce is None:  # a model that only returns logits
                    logits = out.logits_BTV
                    ce = F.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]).float(), targets_BT.reshape(-1)
                    )
            loss = ce + aux_loss_weight * out.aux_loss + z_loss_weight * out.z_loss
            finite &= torch.isfinite(loss)
            (loss / n).backward()
            ce_sum += ce.detach() / n
            aux_sum += out.aux_loss.detach() / n
            z_sum += out.z_loss.detach() / n
            if on_moe_stats is not None and out.moe_stats:
                on_moe_stats(out.moe_stats)
    finally:
        if counted:  # they were this step's: a later step of one micro-batch sums its own
            clear_global_counts(model)
    if grad_norm is not None:  # e.g. over sharded gradients
        gnorm = grad_norm(params)
    else:
        grads = [p.grad for p in params if p.grad is not None]
        gnorm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=device)
    finite &= torch.isfinite(gnorm)
    updated = all_finite(finite)
    if updated:
        if clip is not None:
            torch.nn.utils.clip_grads_with_norm_(params, clip, gnorm)
        optimizer.step()
    update_balance_bias(model, step_taken=updated)  # balance: bias (a no-op without it)
    optimizer.zero_grad(set_to_none=True)
    return StepResult(updated, ce_sum, aux_sum, z_sum, gnorm)
