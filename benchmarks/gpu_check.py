"""GPU check (issue 16 item 8): tokens/s, MFU and the MoE layer's cost on one GPU, in minutes.

    python benchmarks/gpu_check.py            # CUDA (one H200: about 5 minutes)
    python benchmarks/gpu_check.py --smoke    # CPU, tiny shapes: checks that it runs

Three parts, all bf16 autocast over fp32 weights, random tokens (throughput does not depend on
the data), one process:

1. **MoE layer / dense FFN.** Forward + backward of one MoE layer (64 experts of the 125M shape,
   d 768, F 3072, top-2, paper arch) on ``--batch x --seq`` tokens, divided by twice the time of
   one dense FFN of an expert's size on the same tokens (top-2 does twice a dense FFN's FLOPs:
   1.0 means no routing or dispatch overhead). For the expert kernel ``auto`` (grouped_mm on
   sm90/sm100) and ``loop``, with capacity factor 1 (the training default) and dropless.
2. **Training throughput.** moelab's own training step (``train_step``: forward with the chunked
   loss, backward, gradient norm and NaN guard, AdamW from ``build_optimizer``, MoE telemetry)
   for the dense 125M preset and the same shape with 64 experts in every second layer (the
   paper's moe-15b layout with 64 instead of 512 experts). tokens/s is the median over timed
   steps after warm-up; MFU = tokens/s x PaLM FLOPs per token (6 N_active + 12 L T D,
   ``moelab.flops``) / the GPU's dense bf16 peak.
3. **Peers.** The same step through transformers' ``XGLMForCausalLM`` for the dense model, and,
   for an MoE in transformers' own layout (modern arch, an MoE in every layer, 64 experts,
   dropless), moelab against ``MixtralForCausalLM``, with its default ``grouped_mm`` experts
   (which autocast does not cover: they run in fp32, as shipped) and with its ``eager`` experts
   (a loop of F.linear, in bf16 like moelab's). A case that fails (out of memory, say) is
   reported with its error; the rest still runs.

Targets (issue 16): dense MFU >= 40%, MoE MFU >= 30%, MoE layer ratio <= 1.3 at E = 64. The last
line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

try:
    import moelab  # noqa: F401
except ImportError:  # a bare checkout: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from moelab.config import ModelConfig  # noqa: E402
from moelab.flops import count_params, palm_flops_per_token  # noqa: E402
from moelab.model import build_model  # noqa: E402
from moelab.model.moe import MoeFFN  # noqa: E402
from moelab.model.transformer import FeedForward  # noqa: E402
from moelab.presets import get_preset  # noqa: E402
from moelab.train.config import TrainConfig  # noqa: E402
from moelab.train.optim import build_optimizer  # noqa: E402
from moelab.train.step import train_step  # noqa: E402
from moelab.train.telemetry import MoeTelemetry  # noqa: E402

AUX_WEIGHT = 0.01
EXPERTS = 64
# Dense bf16 tensor-core peak (no sparsity), from NVIDIA's data sheets.
PEAK_BF16_FLOPS = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12}
XGLM = "transformers XGLM"
MIXTRAL_GMM = "Mixtral grouped_mm"  # transformers' default experts: fp32 under autocast
MIXTRAL_EAGER = "Mixtral eager"  # a loop of F.linear per expert: bf16 under autocast
TARGETS = {"dense_mfu": 0.40, "moe_mfu": 0.30, "moe_layer_ratio": 1.3}


def device_peak(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return platform.processor() or platform.machine(), None
    name = torch.cuda.get_device_name(device)
    return name, next((p for k, p in PEAK_BF16_FLOPS.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def amp(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


def timed(fn, device: torch.device, warmup: int, reps: int) -> float:
    """Median seconds of ``fn()`` over ``reps`` calls after ``warmup`` untimed ones."""
    times = []
    for i in range(warmup + reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


# -- 1. the MoE layer against a dense FFN ---------------------------------------------------------


def layer_ratios(shape: dict, tokens: int, device: torch.device, args) -> list[dict]:
    cfg = ModelConfig(
        arch="paper",
        vocab_size=16,
        n_layers=2,
        d_model=shape["d_model"],
        n_heads=1,
        d_ffn=shape["d_ffn"],
        n_experts=shape["n_experts"],
        moe_every=1,
        top_k=2,
        dropout=0.0,
        attn_dropout=0.0,
    ).validate()
    torch.manual_seed(0)
    dense = FeedForward(cfg).to(device)
    moe = MoeFFN(cfg, layer=0).to(device).train()
    with torch.no_grad():
        for p in (*dense.parameters(), *moe.parameters()):
            p.normal_(0.0, 0.02)
    x = torch.randn(1, tokens, cfg.d_model, device=device, requires_grad=True)

    def fwd_bwd(fn):
        def run():
            with amp(device):
                y = fn(x)
            y.float().square().mean().backward()

        return run

    dense_s = timed(fwd_bwd(dense), device, args.warmup, args.reps)
    rows = []
    # On CPU "auto" is the loop: the smoke run forces grouped_mm so that it runs that kernel.
    grouped = "auto" if device.type == "cuda" else "grouped_mm"
    for kernel in (grouped, "loop"):
        for cf in (1.0, None):
            moe.experts.kernel, moe.capacity_factor = kernel, cf
            with amp(device):
                runs_gmm = moe.experts.uses_grouped_mm(x)
            s = timed(fwd_bwd(lambda v: moe(v).y_BTD), device, args.warmup, args.reps)
            rows.append(
                {
                    "experts": cfg.n_experts,
                    "d_model": cfg.d_model,
                    "d_ffn": cfg.d_ffn,
                    "tokens": tokens,
                    "kernel": kernel,
                    "runs_grouped_mm": runs_gmm,
                    "capacity_factor": cf,
                    "dense_ffn_ms": 1000 * dense_s,
                    "moe_ms": 1000 * s,
                    "ratio": s / (2 * dense_s),
                }
            )
    return rows


# -- 2 and 3. training steps ---------------------------------------------------------------------


def moelab_model(cfg: ModelConfig, device: torch.device) -> torch.nn.Module:
    # Built straight on the device (the global RNG initialises it): a 1-4B-parameter model
    # initialised on the host would take longer than the measurement.
    with torch.device(device):
        return build_model(cfg).train()


def peer_model(
    kind: str, cfg: ModelConfig, device: torch.device, experts: str = "grouped_mm"
) -> torch.nn.Module:
    """The transformers model ``moelab export`` would write for ``cfg``, presented with
    moelab's output fields (benchmarks/train_throughput.py) so it goes through the same step."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_throughput import HFAsMoelab, hf_mixtral, hf_xglm

    with torch.device(device):
        hf = hf_xglm(cfg) if kind == "xglm" else hf_mixtral(cfg, experts)
    return HFAsMoelab(hf).train()


def measure_steps(cfg: ModelConfig, impl: str, make_model, device, args):
    """(median step seconds, losses) of moelab's training step on one fixed random batch."""
    model = make_model()
    optimizer = build_optimizer(model, TrainConfig(budget_steps=1))
    params = [p for p in model.parameters() if p.requires_grad]
    telemetry = None
    if impl == "moelab" and cfg.is_moe:
        telemetry = MoeTelemetry(cfg.n_experts, cfg.top_k, device)
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(2, cfg.vocab_size, (args.batch, args.seq + 1), generator=g).to(device)
    losses = []

    def step():
        r = train_step(
            model,
            batch,
            optimizer,
            params,
            micro_batch=args.batch,
            aux_loss_weight=AUX_WEIGHT if cfg.is_moe else 0.0,
            autocast=lambda: amp(device),
            on_moe_stats=telemetry.add if telemetry else None,
        )
        losses.append(r.ce_loss)

    s = timed(step, device, args.warmup, args.reps)
    return s, [float(v) for v in losses]


def train_rate(name, impl, cfg: ModelConfig, make_model, device, args, peak) -> dict:
    counts = count_params(cfg)
    row = {"model": name, "impl": impl, "n_experts": cfg.n_experts}
    row.update(params_total=counts.total, params_active=counts.active)
    try:
        s, losses = measure_steps(cfg, impl, make_model, device, args)
        tokens_per_s = args.batch * args.seq / s
        flops = palm_flops_per_token(cfg, args.seq)
        row.update(
            step_ms=1000 * s,
            tokens_per_s=tokens_per_s,
            mfu=tokens_per_s * flops / peak if peak else None,
            first_loss=losses[0],
            last_loss=losses[-1],
            peak_mem_gb=peak_gb(device),
        )
    except Exception as e:  # one failed case (OOM, a peer's API) must not cost the others
        traceback.print_exc()
        row["error"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
    free(device)  # the model and its optimizer went with measure_steps' frame
    return row


def shapes(smoke: bool) -> dict[str, ModelConfig]:
    if smoke:
        dense = dataclasses.replace(get_preset("dense-cpu-0.5m"), dropout=0.0, attn_dropout=0.0)
        n_experts = 8
    else:
        dense = dataclasses.replace(get_preset("dense-125m"), dropout=0.0, attn_dropout=0.0)
        n_experts = EXPERTS
    moe = dataclasses.replace(
        dense, name=f"{dense.name}-e{n_experts}", n_experts=n_experts, moe_every=2
    )
    # transformers' layout for the Mixtral peer: an MoE in every layer, SwiGLU experts of
    # 8/3 d (three matrices of the paper expert's two), dropless like Mixtral.
    d = dense.d_model
    modern = dataclasses.replace(
        moe,
        name=f"{moe.name}-modern",
        arch="modern",
        init="scaled_normal",
        d_ffn=-(-(8 * d) // 3 // 16) * 16,
        moe_every=1,
        capacity_factor=None,
    )
    return {"dense": dense.validate(), "moe": moe.validate(), "modern": modern.validate()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (a minute)")
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default 16)")
    ap.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 1024)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5)")
    ap.add_argument("--reps", type=int, default=None, help="timed steps (default 20)")
    ap.add_argument("--skip-peers", action="store_true", help="moelab only")
    args = ap.parse_args()
    if args.smoke:
        device = torch.device("cpu")
        torch.set_num_threads(1)
        defaults = {"batch": 2, "seq": 32, "warmup": 1, "reps": 2}
    else:
        if not torch.cuda.is_available():
            print("no CUDA device; --smoke runs tiny shapes on CPU", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        defaults = {"batch": 16, "seq": 1024, "warmup": 5, "reps": 20}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    device_name, peak = device_peak(device)
    cfgs = shapes(args.smoke)
    t_start = time.perf_counter()

    moe = cfgs["moe"]
    layer_shape = {"d_model": moe.d_model, "d_ffn": moe.d_ffn, "n_experts": moe.n_experts}
    layers = layer_ratios(layer_shape, args.batch * args.seq, device, args)
    free(device)

    dense, modern = cfgs["dense"], cfgs["modern"]
    runs = [
        ("moelab", dense, lambda: moelab_model(dense, device)),
        ("moelab", moe, lambda: moelab_model(moe, device)),
    ]
    if not args.skip_peers:
        runs += [
            (XGLM, dense, lambda: peer_model("xglm", dense, device)),
            ("moelab", modern, lambda: moelab_model(modern, device)),
            (MIXTRAL_GMM, modern, lambda: peer_model("mixtral", modern, device, "grouped_mm")),
            (MIXTRAL_EAGER, modern, lambda: peer_model("mixtral", modern, device, "eager")),
        ]
    rows = [train_rate(cfg.name, impl, cfg, make, device, args, peak) for impl, cfg, make in runs]
    wall = time.perf_counter() - t_start

    print(
        f"device: {device_name}; bf16 peak: {f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown'}"
    )
    print(f"torch {torch.__version__}; batch {args.batch} x seq {args.seq}; bf16 autocast")
    print(f"steps: {args.warmup} warm-up, median of {args.reps}; {wall:.0f} s in all\n")
    print("MoE layer fwd+bwd / (2 x dense FFN of one expert), top-2 (ideal 1.0):")
    head = f"{'E':>4}{'d':>6}{'F':>6}{'kernel':>12}{'runs gmm':>10}{'cf':>6}"
    print(head + f"{'dense ms':>10}{'moe ms':>9}{'ratio':>7}")
    for r in layers:
        cf = "-" if r["capacity_factor"] is None else f"{r['capacity_factor']:g}"
        print(
            f"{r['experts']:>4}{r['d_model']:>6}{r['d_ffn']:>6}{r['kernel']:>12}"
            f"{'yes' if r['runs_grouped_mm'] else 'no':>10}{cf:>6}{r['dense_ffn_ms']:>10.2f}"
            f"{r['moe_ms']:>9.2f}{r['ratio']:>7.2f}"
        )
    print(
        f"\n{'model':<26}{'impl':<22}{'params':>9}{'active':>9}{'tok/s':>11}{'MFU':>7}"
        f"{'loss 1st':>9}{'last':>7}{'mem GB':>8}"
    )
    for r in rows:
        head = (
            f"{r['model']:<26}{r['impl']:<22}{r['params_total'] / 1e6:>8.0f}M"
            f"{r['params_active'] / 1e6:>8.0f}M"
        )
        if "error" in r:
            print(f"{head}  {r['error']}")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        mem = f"{r['peak_mem_gb']:.1f}" if r["peak_mem_gb"] is not None else "-"
        print(
            f"{head}{r['tokens_per_s']:>11,.0f}{mfu:>7}{r['first_loss']:>9.3f}"
            f"{r['last_loss']:>7.3f}{mem:>8}"
        )

    def rate(model: str, impl: str) -> dict | None:
        return next((r for r in rows if r["model"] == model and r["impl"] == impl), None)

    checks = {}
    if peak:
        dense_row, moe_row = rate(dense.name, "moelab"), rate(moe.name, "moelab")
        checks["dense_mfu"] = dense_row.get("mfu")
        checks["moe_mfu"] = moe_row.get("mfu")
    grouped_cap = next(r for r in layers if r["kernel"] != "loop" and r["capacity_factor"])
    checks["moe_layer_ratio"] = grouped_cap["ratio"]
    print()
    for key, value in checks.items():
        target = TARGETS[key]
        ok = value is not None and (value <= target if key.endswith("ratio") else value >= target)
        sign = "<=" if key.endswith("ratio") else ">="
        shown = "-" if value is None else f"{value:.2f}"
        print(f"target {key} {sign} {target}: {shown} {'met' if ok else 'NOT met'}")
    for model, peer in (
        (dense.name, XGLM),
        (modern.name, MIXTRAL_GMM),
        (modern.name, MIXTRAL_EAGER),
    ):
        ours, theirs = rate(model, "moelab"), rate(model, peer)
        if ours and theirs and "tokens_per_s" in ours and "tokens_per_s" in theirs:
            ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
            print(f"{model}: moelab / {peer} tokens/s = {ratio:.2f}x")
    print(
        json.dumps(
            {
                "benchmark": "gpu_check",
                "device": device_name,
                "peak_bf16_flops": peak,
                "torch": torch.__version__,
                "smoke": args.smoke,
                "batch": args.batch,
                "seq_len": args.seq,
                "wall_s": wall,
                "moe_layer": layers,
                "training": rows,
                "targets": TARGETS,
                "checks": checks,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
