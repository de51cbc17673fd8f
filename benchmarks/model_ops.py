"""moelab's hand-written training ops against the plain PyTorch autograd they replace.

Forward + backward time, same inputs, same run, alternating rounds:
- ``loss``: the chunked LM-head cross-entropy (``moelab.model.fused_loss.linear_cross_entropy``)
  vs ``F.cross_entropy(F.linear(h, W).float(), targets)``;
- ``rmsnorm``: ``moelab.model.rms_norm.RMSNorm`` vs Llama's formula through autograd;
- ``rotary``: ``moelab.model.positions.apply_rotary`` vs ``x * cos + rotate_half(x) * sin``;
- ``attn_bf16``: moelab's ``Attention`` under bf16 autocast (on a CPU without AMX its core runs
  in fp32) vs the same module with torch's bf16 ``scaled_dot_product_attention`` core.

Shapes default to ``moe-cpu-2m-modern`` at batch 8 x 256 (N = 2048 tokens, D = 160, V = 4096,
5 heads of 32). ratio = PyTorch time / moelab time (above 1: moelab faster).

    python benchmarks/model_ops.py [--threads 1] [--tokens 2048] [--reps 30]

Other processes may share the CPU: compare ratios from the same run. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from unittest import mock

import torch
import torch.nn.functional as F

from moelab.model import attention
from moelab.model.fused_loss import linear_cross_entropy
from moelab.model.positions import apply_rotary, rotary_cos_sin
from moelab.model.rms_norm import RMSNorm


def _rmsnorm_reference(x, weight, eps):
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotary_reference(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def cases(n_tokens: int, d_model: int, vocab: int, n_heads: int):
    """name -> (moelab fwd+bwd, torch fwd+bwd), each a closure over fresh inputs."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n_tokens, d_model, generator=g, requires_grad=True)
    w = (0.02 * torch.randn(vocab, d_model, generator=g)).requires_grad_()
    t = torch.randint(0, vocab, (n_tokens,), generator=g)

    norm = RMSNorm(d_model, 1e-5)
    gy = torch.randn(n_tokens, d_model, generator=g)

    T = 256
    B, hd = n_tokens // T, d_model // n_heads
    cos, sin = rotary_cos_sin(torch.arange(T), hd, 10000.0)
    q = torch.randn(B, T, n_heads, hd, generator=g).transpose(1, 2).requires_grad_()
    gq = torch.randn(B, n_heads, T, hd, generator=g)

    attn = attention.Attention(d_model, n_heads, bias=False, attn_dropout=0.0, layer=0)
    x_BTD = torch.randn(B, T, d_model, generator=g, requires_grad=True)

    def attn_step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = attn(x_BTD, (cos, sin))
        y.float().sum().backward()

    def attn_step_bf16_core():
        with mock.patch.object(attention, "_cpu_attention_in_fp32", lambda q: False):
            attn_step()

    return {
        "attn_bf16": (attn_step, attn_step_bf16_core),
        "loss": (
            lambda: linear_cross_entropy(h, w, t).backward(),
            lambda: F.cross_entropy(F.linear(h, w).float(), t).backward(),
        ),
        "rmsnorm": (
            lambda: norm(h).backward(gy),
            lambda: _rmsnorm_reference(h, norm.weight, 1e-5).backward(gy),
        ),
        "rotary": (
            lambda: apply_rotary(q, cos, sin).backward(gq),
            lambda: _rotary_reference(q, cos, sin).backward(gq),
        ),
    }


def timed(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--tokens", type=int, default=2048, help="multiple of 256")
    parser.add_argument("--d-model", type=int, default=160)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=5)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name, (ours, peer) in cases(args.tokens, args.d_model, args.vocab, args.heads).items():
        ours(), peer()  # warm-up
        times = {"moelab": [], "torch": []}
        for r in range(args.rounds):
            order = [("moelab", ours), ("torch", peer)]
            for key, fn in order if r % 2 == 0 else reversed(order):
                times[key].append(timed(fn, args.reps))
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        rows.append(
            {
                "op": name,
                "moelab_ms": ms["moelab"],
                "torch_ms": ms["torch"],
                "ratio": ms["torch"] / ms["moelab"],
            }
        )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"N={args.tokens} D={args.d_model} V={args.vocab}, forward + backward"
    )
    print(f"{'op':<10}{'moelab ms':>11}{'torch ms':>10}{'ratio':>8}")
    for r in rows:
        print(f"{r['op']:<10}{r['moelab_ms']:>11.2f}{r['torch_ms']:>10.2f}{r['ratio']:>8.2f}")
    print(json.dumps({"benchmark": "model_ops", "results": rows}))


if __name__ == "__main__":
    main()
