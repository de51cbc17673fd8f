"""Validation loss per domain on a fixed subset of each validation split.

The subset is the first ``eval_tokens`` tokens of every domain's val split, cut into windows of
``seq_len`` predictions (``moelab.data.eval_windows``), so every run with the same data and
``seq_len`` is scored on exactly the same tokens. The model is put in ``eval()`` mode: no
dropout and the MoE's evaluation capacity (dropless by default), then back to training mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from moelab.model.balance import moe_layers

B = TypeVar("B")


def summed_nll(
    batches: Iterable[B], batch_nll: Callable[[B], tuple[torch.Tensor, int]]
) -> tuple[float, int]:
    """(summed next-token negative log-likelihood in nats, scored tokens) over ``batches``, where
    ``batch_nll(batch)`` gives a batch's summed loss and its scored tokens: the one loss loop of
    training validation and perplexity evaluation. Each batch's sum is added in float64 on its
    device, so nothing waits for the device until the end."""
    total, count = None, 0
    for batch in batches:
        nll, n = batch_nll(batch)
        total = nll.double() if total is None else total + nll.double()
        count += n
    return (0.0 if total is None else float(total)), count


def build_eval_sets(data, seq_len: int, eval_tokens: int, batch_size: int) -> dict[str, list]:
    """Evaluation batches per domain (every domain of the prepared data with a val split):
    the first ``eval_tokens`` tokens, each predicted once, the first after an end-of-document
    token as in training."""
    from moelab.data import eval_windows

    sets: dict[str, list] = {}
    if eval_tokens <= 0:
        return sets
    for domain in data.domains:
        if "val" not in data.splits(domain) or data.num_tokens(domain, "val") == 0:
            continue
        tokens = data.tokens(domain, "val")
        batches = list(eval_windows(tokens, seq_len, batch_size, eval_tokens, bos_id=data.eot_id))
        if batches:
            sets[domain] = batches
    return sets


def set_capacity(
    model: torch.nn.Module, eval_factor: float | None = None, train_factor: float | None = None
) -> None:
    """Set the MoE capacity factors of every MoE layer (None = dropless)."""
    for layer in moe_layers(model):
        layer.eval_capacity_factor = eval_factor
        layer.capacity_factor = train_factor


_KEEP: Any = object()  # evaluation_state: leave the capacity factors as they are


@contextlib.contextmanager
def evaluation_state(
    model: torch.nn.Module | None, capacity_factor: float | None = _KEEP
) -> Iterator[None]:
    """Eval mode (and, when ``capacity_factor`` is given, that MoE capacity factor in train and
    eval mode; None = dropless) for the body of the ``with``. On exit every module's train/eval
    flag and every MoE layer's capacity factors are what they were on entry, so an evaluation
    never changes what a later one on the same model computes (perplexity used to leave the
    layers dropless, and priming after it then ignored ``model.eval_capacity_factor``)."""
    if model is None:
        yield
        return
    flags = [(m, m.training) for m in model.modules()]
    factors = [(m, m.capacity_factor, m.eval_capacity_factor) for m in moe_layers(model)]
    try:
        model.eval()
        if capacity_factor is not _KEEP:
            set_capacity(model, eval_factor=capacity_factor, train_factor=capacity_factor)
        yield
    finally:
        # Per module, not model.train(flag): a model may hold a mix (e.g. frozen parts in eval).
        for module, training in flags:
            module.training = training
        for layer, train_cf, eval_cf in factors:
            layer.capacity_factor = train_cf
            layer.eval_capacity_factor = eval_cf


@torch.no_grad()
def evaluate(
    model: nn.Module,
    eval_sets: dict[str, list],
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> dict[str, float]:
    """Mean next-token cross-entropy (nats) per domain."""

    def batch_nll(batch) -> tuple[torch.Tensor, int]:
        inputs_BT = batch.inputs_BT.to(device, non_blocking=True)
        targets_BT = batch.targets_BT.to(device, non_blocking=True)
        mask_BT = batch.mask_BT.to(device, non_blocking=True)
        with autocast():
            logits = model(inputs_BT).logits_BTV
        loss_BT = F.cross_entropy(logits.float().transpose(1, 2), targets_BT, reduction="none")
        return (loss_BT * mask_BT).sum(), batch.n_tokens

    out = {}
    with evaluation_state(model):
        for domain, batches in eval_sets.items():
            nll, count = summed_nll(batches, batch_nll)
            out[domain] = nll / max(1, count)
    return out
