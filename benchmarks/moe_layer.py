"""MoE layer cost relative to a dense FFN: forward + backward time on the same tokens.

ratio = time(MoE layer, top-2) / (2 * time(dense FFN of one expert's size)). An MoE top-2 layer
does twice a dense FFN's FLOPs (plus a tiny router), so 1.0 is ideal; anything above is routing
and dispatch overhead. Also times a naive reference: a Python loop over experts that finds each
expert's tokens with a boolean mask, index_selects them and index_adds the outputs back.

    python benchmarks/moe_layer.py            # full grid (a few minutes on 2 cores)
    python benchmarks/moe_layer.py --quick    # E=8, d=256, fp32 only

Other processes may share the CPU: compare ratios measured in the same run, not absolute times
across runs. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from moelab.config import ModelConfig
from moelab.model.moe import MoeFFN, route
from moelab.model.transformer import FeedForward


def naive_moe(layer: MoeFFN, x_SD: torch.Tensor) -> torch.Tensor:
    """Reference dispatch: per expert, mask -> index_select -> FFN -> index_add."""
    routing = route(layer.router_logits(x_SD), layer.top_k, None)
    ex = layer.experts
    w1s, b1s, w2s, b2s = ex.w1.unbind(0), ex.b1.unbind(0), ex.w2.unbind(0), ex.b2.unbind(0)
    out = torch.zeros_like(x_SD)
    for e in range(layer.n_experts):
        token_n, rank_n = (routing.expert_SK == e).nonzero(as_tuple=True)
        if token_n.numel() == 0:
            continue
        h = F.gelu(torch.addmm(b1s[e], x_SD.index_select(0, token_n), w1s[e]))
        y = torch.addmm(b2s[e], h, w2s[e]) * routing.combine_SK[token_n, rank_n, None].to(h.dtype)
        out = out.index_add(0, token_n, y.to(out.dtype))
    return out


def time_fwd_bwd(fn, x: torch.Tensor, params, dtype: torch.dtype, reps: int) -> float:
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == torch.bfloat16 else nullcontext()
    times = []
    for i in range(reps + 1):  # first call warms up
        for p in params:
            p.grad = None
        x.grad = None
        t0 = time.perf_counter()
        with ctx:
            y = fn(x)
        y.float().square().mean().backward()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_one(E: int, d: int, dtype: torch.dtype, S: int, reps: int) -> dict:
    cfg = ModelConfig(
        arch="paper",
        vocab_size=16,
        n_layers=2,
        d_model=d,
        n_heads=1,
        d_ffn=4 * d,
        n_experts=E,
        moe_every=1,
        top_k=2,
        capacity_factor=None,
        dropout=0.0,
        attn_dropout=0.0,
        activation_dropout=0.0,
    ).validate()
    torch.manual_seed(0)
    dense = FeedForward(cfg)
    moe = MoeFFN(cfg, layer=0)
    with torch.no_grad():
        for p in (*dense.parameters(), *moe.parameters()):
            p.normal_(0.0, 0.02)
    x = torch.randn(1, S, d, requires_grad=True)
    x_flat = torch.randn(S, d, requires_grad=True)
    t_dense = time_fwd_bwd(dense, x, list(dense.parameters()), dtype, reps)
    t_moe = time_fwd_bwd(lambda v: moe(v).y_BTD, x, list(moe.parameters()), dtype, reps)
    t_naive = time_fwd_bwd(lambda v: naive_moe(moe, v), x_flat, list(moe.parameters()), dtype, reps)
    return {
        "experts": E,
        "d_model": d,
        "d_ffn": 4 * d,
        "tokens": S,
        "dtype": "fp32" if dtype == torch.float32 else "bf16",
        "dense_ms": 1000 * t_dense,
        "moe_ms": 1000 * t_moe,
        "naive_ms": 1000 * t_naive,
        "moe_ratio": t_moe / (2 * t_dense),
        "naive_ratio": t_naive / (2 * t_dense),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only E=8, d=256, fp32")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=4096)
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    grid = (
        [(8, 256, torch.float32)]
        if args.quick
        else [
            (E, d, dt)
            for dt in (torch.float32, torch.bfloat16)
            for d in (256, 512)
            for E in (8, 64)
        ]
    )
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        "other processes may share the CPU"
    )
    print(
        f"# ratio = fwd+bwd time / (2 x dense FFN of one expert), top-2, {args.tokens} tokens, "
        "dropless; ideal 1.0"
    )
    header = f"{'E':>4} {'d':>5} {'dtype':>5} {'dense ms':>9} {'moe ms':>8} {'naive ms':>9} "
    print(header + f"{'moe ratio':>10} {'naive ratio':>12}")
    rows = []
    for E, d, dt in grid:
        r = bench_one(E, d, dt, args.tokens, args.reps)
        rows.append(r)
        print(
            f"{E:>4} {d:>5} {r['dtype']:>5} {r['dense_ms']:>9.1f} {r['moe_ms']:>8.1f} "
            f"{r['naive_ms']:>9.1f} {r['moe_ratio']:>10.2f} {r['naive_ratio']:>12.2f}",
            flush=True,
        )
    targets = {8: 1.3, 64: 2.0}
    fp32 = [r for r in rows if r["dtype"] == "fp32"]
    met = all(r["moe_ratio"] <= targets[r["experts"]] for r in fp32)
    print(f"# fp32 targets (<= 1.3 at E=8, <= 2.0 at E=64): {'met' if met else 'NOT met'}")
    print(
        json.dumps(
            {
                "benchmark": "moe_layer",
                "threads": torch.get_num_threads(),
                "fp32_targets_met": met,
                "results": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
