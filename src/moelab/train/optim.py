"""AdamW with weight decay on matrices only (embeddings, projections, experts, router);
biases and norm gains are not decayed."""

from __future__ import annotations

import torch
from torch import nn

from moelab.train.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for param in model.parameters():  # parameters() yields a tied weight once
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """The paper's optimizer: Adam(W) with betas (0.9, 0.98), eps 1e-8, decoupled weight decay.
    ``lr`` is set per step by the schedule."""
    groups = param_groups(model, cfg.weight_decay)
    params = [p for g in groups for p in g["params"]]
    # The fused kernel is ~5x faster than foreach on CPU (measured at 10M parameters); it takes
    # plain tensors on CPU or CUDA. Sharded (DTensor) parameters use the foreach path.
    fused = all(type(p.data) is torch.Tensor and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        fused=fused or None,
        foreach=None if fused else True,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
