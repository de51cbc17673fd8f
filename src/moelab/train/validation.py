"""Validation loss per domain on a fixed subset of each validation split.

The subset is the first ``eval_tokens`` tokens of every domain's val split, cut into windows of
``seq_len + 1`` tokens, so every run with the same data and ``seq_len`` is scored on exactly the
same tokens. The model is put in ``eval()`` mode: no dropout and the MoE's evaluation capacity
(dropless by default), then back to training mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _windows_of(data, domain: str, seq_len: int, max_tokens: int) -> torch.Tensor:
    """(N, seq_len + 1) windows covering the first ``max_tokens`` tokens of the val split."""
    tokens = data.tokens(domain, "val")
    n = min(len(tokens), max_tokens + 1)
    n_windows = (n - 1) // seq_len
    if n_windows == 0:
        return torch.empty(0, seq_len + 1, dtype=torch.long)
    import numpy as np

    arr = np.asarray(tokens[: n_windows * seq_len + 1], dtype=np.int64)
    idx = np.arange(n_windows)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return torch.from_numpy(arr[idx])


def build_eval_sets(data, seq_len: int, eval_tokens: int) -> dict[str, torch.Tensor]:
    """Windows per domain (every domain of the prepared data with a val split)."""
    sets = {}
    if eval_tokens <= 0:
        return sets
    for domain in data.domains:
        try:
            windows = _windows_of(data, domain, seq_len, eval_tokens)
        except (KeyError, FileNotFoundError):
            continue  # a domain without a val split
        if len(windows):
            sets[domain] = windows
    return sets


@torch.no_grad()
def evaluate(
    model: nn.Module,
    eval_sets: dict[str, torch.Tensor],
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> dict[str, float]:
    """Mean next-token cross-entropy (nats) per domain."""
    was_training = model.training
    model.eval()
    out = {}
    try:
        for domain, windows in eval_sets.items():
            total = torch.zeros((), dtype=torch.float64, device=device)
            count = 0
            for i in range(0, len(windows), batch_size):
                chunk = windows[i : i + batch_size].to(device, non_blocking=True)
                with autocast():
                    logits = model(chunk[:, :-1]).logits_BTV
                loss = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]).float(),
                    chunk[:, 1:].reshape(-1),
                    reduction="sum",
                )
                total += loss.double()
                count += chunk[:, 1:].numel()
            out[domain] = float(total / max(1, count))
    finally:
        model.train(was_training)
    return out
