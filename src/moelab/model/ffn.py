"""The dense FFN and the normalisation layers a block uses (shared by the dense blocks and the
MoE layer's shared experts)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moelab.config import ModelConfig
from moelab.model.rms_norm import RMSNorm


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.arch == "paper":
        return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
    return RMSNorm(cfg.d_model, eps=cfg.norm_eps)


class FeedForward(nn.Module):
    """Dense FFN of width F = ``width`` (default ``d_ffn``; an MoE layer's shared experts use it
    too). paper: ``fc1`` (D -> F, bias), GELU, ``fc2`` (F -> D, bias).
    modern: ``w1`` (gate, D -> F), ``w3`` (up, D -> F), ``w2`` (down, F -> D), SwiGLU, no bias."""

    def __init__(self, cfg: ModelConfig, width: int | None = None):
        super().__init__()
        self.arch = cfg.arch
        self.activation_dropout = cfg.activation_dropout
        D, Fd = cfg.d_model, cfg.d_ffn if width is None else width
        if cfg.arch == "paper":
            self.fc1 = nn.Linear(D, Fd)
            self.fc2 = nn.Linear(Fd, D)
        else:
            self.w1 = nn.Linear(D, Fd, bias=False)
            self.w3 = nn.Linear(D, Fd, bias=False)
            self.w2 = nn.Linear(Fd, D, bias=False)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        if self.arch == "paper":
            h = F.gelu(self.fc1(x_BTD))
            h = F.dropout(h, self.activation_dropout, self.training)
            return self.fc2(h)
        h = F.silu(self.w1(x_BTD)) * self.w3(x_BTD)
        h = F.dropout(h, self.activation_dropout, self.training)
        return self.w2(h)
