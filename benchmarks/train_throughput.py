"""Training throughput (tokens/s) of moelab vs Hugging Face transformers models of the same shape.

Both sides run the identical loop, moelab's own ``train_step`` (forward, cross-entropy + 0.01 x
balancing loss for MoE, backward, gradient norm and NaN guard, AdamW step from moelab's
``build_optimizer``) on the same token batch with the same autocast dtype; moelab's side also
collects its per-layer MoE telemetry, alternating between the two models in rounds so a
background load hits both alike. Other processes may share this CPU: compare the ratio, not the
absolute numbers.

Shape mapping:
- paper architecture, ``dense-cpu-2m`` -> ``XGLMForCausalLM`` (d_model, ffn_dim, num_layers,
  attention_heads, vocab, max_position_embeddings; scale_embedding, tied embeddings, GELU,
  sinusoidal positions, pre-LayerNorm with biases: XGLM is exactly this architecture).
- MoE, ``moe-cpu-2m-modern`` (8 experts, top-2 in every layer, SwiGLU experts, RMSNorm, rotary)
  -> ``MixtralForCausalLM`` (hidden_size, intermediate_size = d_ffn, num_local_experts,
  num_experts_per_tok, num_key_value_heads = heads, tied embeddings, aux loss on). Mixtral is
  dropless, so moelab runs with ``capacity_factor: null`` (dropless) too, the like-for-like case.
  Mixtral's default experts (``grouped_mm``) are not covered by CPU autocast and stay in fp32
  under bf16, so in bf16 a second row uses its ``eager`` experts (F.linear per expert), which
  run in bf16 like moelab's.

moelab's model computes the loss itself when given targets (a chunked LM head, no logits);
transformers' models return logits and ``train_step`` takes the loss from them.

Usage: python benchmarks/train_throughput.py [--steps 8] [--rounds 3] [--batch 16] [--seq 256]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import time
from types import SimpleNamespace

import torch

from moelab.config import ModelConfig
from moelab.model import build_model
from moelab.presets import get_preset
from moelab.train.config import TrainConfig
from moelab.train.optim import build_optimizer
from moelab.train.step import train_step
from moelab.train.telemetry import MoeTelemetry

AUX_WEIGHT = 0.01


def hf_peer(hf_class, cfg: ModelConfig):
    """The transformers model that ``moelab export`` would write for ``cfg`` (same config
    builder), freshly initialised, set up for training: no KV cache, router logits returned so
    Mixtral's balancing loss is part of its loss, as moelab's is."""
    import transformers

    from moelab.interop.hf_base import SpecialIds

    hf_cfg = hf_class.make_config(cfg, SpecialIds(eot=0, pad=1))
    hf_cfg.use_cache = False
    if cfg.is_moe:
        hf_cfg.output_router_logits = True
        hf_cfg.router_aux_loss_coef = AUX_WEIGHT
    return getattr(transformers, hf_class.name)(hf_cfg)


def hf_xglm(cfg: ModelConfig):
    from moelab.interop.hf_xglm import XGLM

    return hf_peer(XGLM, cfg)


def hf_mixtral(cfg: ModelConfig, experts_implementation: str | None = None):
    from moelab.interop.hf_moe import MIXTRAL

    model = hf_peer(MIXTRAL, cfg)
    if experts_implementation is not None:
        model.set_experts_implementation(experts_implementation)
    return model


class HFAsMoelab(torch.nn.Module):
    """Present a transformers causal LM with moelab's output fields, so both models go
    through moelab's own ``train_step``."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf = hf_model

    def forward(self, tokens_BT, targets_BT=None):
        # Logits out, as transformers' models give them: train_step takes the loss from them.
        out = self.hf(input_ids=tokens_BT)
        zero = out.logits.new_zeros((), dtype=torch.float32)
        aux = getattr(out, "aux_loss", None)
        return SimpleNamespace(
            logits_BTV=out.logits,
            ce_loss=None,
            aux_loss=aux.float() if aux is not None else zero,
            z_loss=zero,
            moe_stats=[],
        )


def time_steps(model, optimizer, batch, steps: int, dtype: str, telemetry) -> float:
    """Seconds per training step (mean over ``steps``), through moelab's ``train_step``."""
    params = [p for p in model.parameters() if p.requires_grad]

    def amp():
        if dtype == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(
            model,
            batch,
            optimizer,
            params,
            micro_batch=len(batch),
            aux_loss_weight=AUX_WEIGHT,
            autocast=amp,
            on_moe_stats=telemetry.add if telemetry else None,
        )
    return (time.perf_counter() - t0) / steps


def compare(name: str, ours_cfg: ModelConfig, make_peer, peer_name: str, args, dtype: str):
    torch.manual_seed(0)
    ours = build_model(ours_cfg, seed=0).train()
    peer = HFAsMoelab(make_peer(ours_cfg)).train()
    train_cfg = TrainConfig(budget_steps=1)
    opts = {"moelab": build_optimizer(ours, train_cfg), peer_name: build_optimizer(peer, train_cfg)}
    models = {"moelab": ours, peer_name: peer}
    # moelab's step also collects its MoE telemetry (part of what a moelab run does).
    telemetry = {
        "moelab": MoeTelemetry(ours_cfg.n_experts, ours_cfg.top_k, torch.device("cpu"))
        if ours_cfg.is_moe
        else None,
        peer_name: None,
    }
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(2, ours_cfg.vocab_size, (args.batch, args.seq + 1), generator=g)
    for key in models:  # warm-up: allocator, lazy init, optimizer state
        time_steps(models[key], opts[key], batch, 2, dtype, telemetry[key])
    per_step: dict[str, list[float]] = {k: [] for k in models}
    for r in range(args.rounds):
        order = list(models) if r % 2 == 0 else list(reversed(models))
        for key in order:
            per_step[key].append(
                time_steps(models[key], opts[key], batch, args.steps, dtype, telemetry[key])
            )
    tokens = args.batch * args.seq
    tps = {k: tokens / statistics.median(v) for k, v in per_step.items()}
    extra = ""
    if ours_cfg.is_moe and hasattr(peer.hf.config, "_experts_implementation"):
        extra = f" (HF experts implementation: {peer.hf.config._experts_implementation})"
    return {
        "case": name,
        "dtype": dtype,
        "peer": peer_name + extra,
        "params_moelab": sum(p.numel() for p in ours.parameters()),
        "params_peer": sum(p.numel() for p in peer.parameters()),
        "tokens_per_s_moelab": tps["moelab"],
        "tokens_per_s_peer": tps[peer_name],
        "ratio": tps["moelab"] / tps[peer_name],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--cases", default="dense,moe")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    dense = get_preset("dense-cpu-2m")
    moe = dataclasses.replace(get_preset("moe-cpu-2m-modern"), capacity_factor=None)
    rows = []
    for dtype in args.dtypes.split(","):
        if "dense" in args.cases:
            rows.append(compare("dense-cpu-2m", dense, hf_xglm, "XGLMForCausalLM", args, dtype))
        if "moe" in args.cases:
            rows.append(
                compare("moe-cpu-2m-modern", moe, hf_mixtral, "MixtralForCausalLM", args, dtype)
            )
            if dtype == "bf16":
                # Mixtral's default grouped_mm experts ignore CPU autocast and stay in fp32;
                # its eager experts (a loop of F.linear) follow autocast: the same-dtype peer.
                rows.append(
                    compare(
                        "moe-cpu-2m-modern",
                        moe,
                        lambda cfg: hf_mixtral(cfg, "eager"),
                        "MixtralForCausalLM",
                        args,
                        dtype,
                    )
                )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        "other processes may share this CPU"
    )
    print(f"batch {args.batch} x {args.seq} tokens, {args.rounds} rounds of {args.steps} steps\n")
    head = f"{'case':<20}{'dtype':<6}{'params (ours/peer)':>22}{'moelab tok/s':>14}"
    print(head + f"{'peer tok/s':>12}{'ratio':>8}  peer")
    for r in rows:
        params = f"{r['params_moelab']:,}/{r['params_peer']:,}"
        print(
            f"{r['case']:<20}{r['dtype']:<6}{params:>22}{r['tokens_per_s_moelab']:>14,.0f}"
            f"{r['tokens_per_s_peer']:>12,.0f}{r['ratio']:>8.2f}  {r['peer']}"
        )
    print("\ntarget: moelab >= 1.2x the Hugging Face throughput")
    if any(r["dtype"] == "bf16" and "Mixtral" in r["peer"] for r in rows):
        # Measured: CPU autocast does not cover torch._grouped_mm, so Mixtral's experts stay in
        # fp32 under bf16 autocast while moelab's run in bf16 (slower than fp32 without AMX).
        print(
            "note: under bf16 autocast Mixtral's grouped_mm experts run in fp32 on CPU; "
            "its eager experts run in bf16 like moelab's"
        )
    print(json.dumps({"benchmark": "train_throughput", "target_ratio": 1.2, "results": rows}))


if __name__ == "__main__":
    main()
