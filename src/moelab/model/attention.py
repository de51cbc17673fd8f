"""Causal multi-head self-attention through ``scaled_dot_product_attention``."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from moelab.model.kv_cache import KVCache
from moelab.model.positions import apply_rotary


def _cpu_attention_in_fp32(q: torch.Tensor) -> bool:
    """On a CPU without AMX tiles, torch's bf16/fp16 flash attention is slower than fp32, its
    backward most of all. There the core runs in fp32 (the softmax inside is the kind of op
    autocast keeps in fp32 anyway); elsewhere it follows the input dtype. A whole attention
    block of ``moe-cpu-2m-modern`` under bf16 autocast, forward + backward, one core: 37.2 ms
    against 48.7 ms with a bf16 core (``python benchmarks/model_ops.py --threads 1``)."""
    if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16):
        return False
    has_amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    return not has_amx()


class Attention(nn.Module):
    """q/k/v/out projections (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``: nn.Linear D -> D,
    with biases in the paper arch, without in the modern arch) and causal SDPA. Rotary angles
    are applied to q and k when given (modern arch)."""

    def __init__(self, d_model: int, n_heads: int, bias: bool, attn_dropout: float, layer: int):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.attn_dropout = attn_dropout
        self.layer = layer
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(
        self,
        x_BTD: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        B, T, D = x_BTD.shape
        # (B, T, D) -> (B, H, T, head_dim)
        q = self.q_proj(x_BTD).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x_BTD).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x_BTD).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        if rotary is not None:
            cos_Td, sin_Td = rotary
            q = apply_rotary(q, cos_Td, sin_Td)
            k = apply_rotary(k, cos_Td, sin_Td)
        past = 0
        if kv_cache is not None:
            past = kv_cache.length
            k, v = kv_cache.append(self.layer, k, v)
        dropout_p = self.attn_dropout if self.training else 0.0
        out_dtype = q.dtype
        in_fp32 = _cpu_attention_in_fp32(q)
        if in_fp32:
            q, k, v = q.float(), k.float(), v.float()
        # CPU autocast would cast SDPA's inputs back down.
        with torch.autocast("cpu", enabled=False) if in_fp32 else contextlib.nullcontext():
            y = self._sdpa(q, k, v, past, dropout_p)
        return self.out_proj(y.to(out_dtype).transpose(1, 2).reshape(B, T, D))

    @staticmethod
    def _sdpa(q, k, v, past: int, dropout_p: float) -> torch.Tensor:
        T = q.shape[2]
        if past == 0:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=T > 1)
        if T == 1:
            # One new token attends to every cached position: no mask needed.
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        # SDPA's is_causal aligns the mask top-left; with a cached prefix, query i sits at
        # absolute position past + i and may see keys 0 .. past + i.
        q_pos = torch.arange(past, past + T, device=q.device)[:, None]
        k_pos = torch.arange(past + T, device=q.device)[None, :]
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=k_pos <= q_pos, dropout_p=dropout_p
        )
