"""GPU check: train the 125M dense preset and a small MoE with moelab's real trainer on the
built-in corpus, next to transformers' XGLMForCausalLM of the same shape as the peer, and
report tokens/s and MFU (PaLM FLOPs per token against the GPU's stated dense bf16 peak).

    PYTHONPATH=src python benchmarks/gpu_check.py                 # GPU (H200): a few hundred steps
    PYTHONPATH=src python benchmarks/gpu_check.py --smoke         # CPU: tiny shapes, seconds

Everything runs offline: the data is moelab's built-in corpus (Python's standard library text),
prepared here into a temporary folder with an 8192-token BPE vocabulary, so "125M" is the paper's
12 x 768 shape with that vocabulary (about 91M parameters; the table prints the exact counts).
Both sides train with bf16 autocast over fp32 weights,
AdamW (betas 0.9/0.98, eps 1e-8, wd 0.01), the same batch size, sequence length and batches
(moelab's TrainStream). moelab's tokens/s come from its own metrics.jsonl (the step time,
excluding evaluation and checkpoint writes); the first quarter of the steps is skipped on both
sides (allocator and kernel warm-up). The small MoE is the paper's moe-15b shape (dense-125m
with top-2 MoE in every second layer) with 32 experts instead of 512 so that it fits one GPU with
its optimizer state. MFU uses moelab.flops.palm_flops_per_token (6 N_active + 12 L T D).

Other processes may share the machine; compare figures from the same run. The last line is one
JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

try:
    import moelab  # noqa: F401
except ImportError:  # a bare checkout: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from moelab.config import ModelConfig  # noqa: E402
from moelab.flops import count_params, palm_flops_per_token  # noqa: E402
from moelab.train import load_run_config, read_metrics, train  # noqa: E402

# Dense bf16 tensor-core peak (no sparsity), from NVIDIA's data sheets.
PEAK_BF16_FLOPS = {
    "H200": 989.4e12,
    "H100": 989.4e12,
    "A100": 312e12,
}


def gpu_peak() -> tuple[str, float | None]:
    if not torch.cuda.is_available():
        return platform.processor() or "cpu", None
    name = torch.cuda.get_device_name(0)
    for key, peak in PEAK_BF16_FLOPS.items():
        if key in name:
            return name, peak
    return name, None


def prepare_corpus(out: Path, smoke: bool) -> Path:
    from moelab.data import prepare

    prepare(
        out,
        builtin=True,
        vocab_size=512 if smoke else 8192,
        builtin_max_bytes=300_000 if smoke else 3_000_000,
        val_fraction=0.02,
    )
    return out


def run_config(model: dict, data: Path, args) -> dict:
    return {
        "model": model,
        "data": str(data),
        "train": {
            "budget_steps": args.steps,
            "seq_len": args.seq,
            "batch_size": args.batch,
            "lr": 6e-4,
            "warmup_steps": max(1, args.steps // 20),
            "dtype": "fp32" if args.smoke else "bf16",
            "eval_tokens": 0,
            "checkpoint_every": 0,
            "keep_last": 1,
            "log_every": max(1, args.steps // 20),
            "device": args.device,
            "seed": 1,
        },
    }


def steady_rate(rows: list[dict], steps: int) -> float:
    """Median tokens/s over the logged intervals after the first quarter of the steps."""
    rates = [r["tokens_per_s"] for r in rows if r["step"] > steps // 4 and r["tokens_per_s"]]
    if not rates:
        rates = [r["tokens_per_s"] for r in rows if r["tokens_per_s"]]
    return statistics.median(rates)


def train_moelab(name: str, model: dict, data: Path, work: Path, args) -> dict:
    cfg = load_run_config(run_config(model, data, args))
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    summary = train(cfg, work / name, progress=False)
    wall = time.perf_counter() - t0
    rows = read_metrics(work / name)
    rate = steady_rate(rows, args.steps)
    return {
        "name": name,
        "impl": "moelab",
        "cfg": cfg.model,
        "tokens_per_s": rate,
        "first_loss": rows[0]["loss"],
        "final_loss": summary["final_train_loss"],
        "wall_s": wall,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9
        if args.device.startswith("cuda")
        else None,
        "data_cfg": cfg,
    }


def hf_xglm(cfg: ModelConfig):
    # The same peer as benchmarks/train_throughput.py: what `moelab export` writes for cfg.
    # transformers 5 has only eager attention for XGLM (it refuses "sdpa"): the peer as shipped.
    from moelab.interop.hf_xglm import XGLM

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_throughput import hf_peer

    return hf_peer(XGLM, cfg)


def train_xglm(run_cfg, args) -> dict:
    """The peer: the same shape, optimizer and batches, bf16 autocast over fp32 weights; a
    constant learning rate (the schedule costs nothing either way)."""
    from moelab.data import PreparedData, TrainStream

    device = torch.device(args.device)
    torch.manual_seed(1)
    model = hf_xglm(run_cfg.model).to(device).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=6e-4,
        betas=(0.9, 0.98),
        eps=1e-8,
        foreach=True,
    )
    t = run_cfg.train
    stream = TrainStream(PreparedData.open(run_cfg.data.dir), t.seq_len, t.batch_size, t.seed)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=not args.smoke)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for step in range(1, args.steps + 1):
        batch = stream.batch(step).to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with amp:
            logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))  # same norm work
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    steady = times[args.steps // 4 :] or times
    tokens = t.batch_size * t.seq_len
    return {
        "name": f"{run_cfg.model.name} (XGLM)",
        "impl": "transformers",
        "cfg": run_cfg.model,
        "tokens_per_s": tokens / statistics.median(steady),
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "wall_s": sum(times),
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (seconds)")
    ap.add_argument("--steps", type=int, default=None, help="steps per model (default 300)")
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default 32)")
    ap.add_argument("--seq", type=int, default=None, help="sequence length (default 1024)")
    ap.add_argument("--experts", type=int, default=32, help="experts of the small MoE")
    ap.add_argument("--skip-peer", action="store_true", help="moelab only")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.batch, args.seq = args.steps or 8, args.batch or 4, args.seq or 32
        args.device = "cpu"
        dense = {"preset": "dense-cpu-0.5m", "max_seq_len": 64}
        moe = {"preset": "moe-cpu-0.5m", "max_seq_len": 64}
    else:
        if not torch.cuda.is_available():
            print("no CUDA device; use --smoke for the CPU smoke run", file=sys.stderr)
            return 2
        args.steps, args.batch, args.seq = args.steps or 300, args.batch or 32, args.seq or 1024
        args.device = "cuda"
        torch.backends.cuda.matmul.allow_tf32 = True
        dense = {"preset": "dense-125m"}
        moe = {"preset": "moe-15b", "n_experts": args.experts, "name": "moe-125m-e32"}
    device_name, peak = gpu_peak()

    results = []
    with tempfile.TemporaryDirectory(prefix="moelab-gpu-check-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        data = prepare_corpus(work / "data", args.smoke)
        prep_s = time.perf_counter() - t0
        dense_res = train_moelab("dense", dense, data, work, args)
        results.append(dense_res)
        if not args.skip_peer:
            try:
                results.append(train_xglm(dense_res["data_cfg"], args))
            except ImportError as e:  # a machine without transformers: moelab figures only
                print(f"peer skipped: transformers is not importable ({e})", file=sys.stderr)
                args.skip_peer = True
        results.append(train_moelab("moe", moe, data, work, args))

    print(f"device: {device_name}; bf16 peak: {peak / 1e12 if peak else 'unknown'} TFLOP/s")
    print(f"data: built-in corpus, prepared in {prep_s:.1f} s; other processes may share it")
    print(f"steps {args.steps}, batch {args.batch} x seq {args.seq}\n")
    head = (
        f"{'model':<24}{'impl':<14}{'params':>10}{'active':>10}{'tok/s':>12}{'MFU':>8}"
        f"{'loss 1st':>10}{'loss last':>10}{'mem GB':>8}"
    )
    print(head)
    print("-" * len(head))
    figures = []
    for r in results:
        cfg = r["cfg"]
        counts = count_params(cfg)
        flops_tok = palm_flops_per_token(cfg, args.seq)
        mfu = r["tokens_per_s"] * flops_tok / peak if peak else None
        mem = f"{r['peak_mem_gb']:.1f}" if r["peak_mem_gb"] is not None else "-"
        print(
            f"{cfg.name:<24}{r['impl']:<14}{counts.total / 1e6:>9.1f}M{counts.active / 1e6:>9.1f}M"
            f"{r['tokens_per_s']:>12,.0f}{(f'{mfu:.1%}' if mfu is not None else '-'):>8}"
            f"{r['first_loss']:>10.3f}{r['final_loss']:>10.3f}{mem:>8}"
        )
        figures.append(
            {
                "model": cfg.name,
                "impl": r["impl"],
                "params_total": counts.total,
                "params_active": counts.active,
                "palm_flops_per_token": flops_tok,
                "tokens_per_s": r["tokens_per_s"],
                "mfu": mfu,
                "first_loss": r["first_loss"],
                "final_loss": r["final_loss"],
                "peak_mem_gb": r["peak_mem_gb"],
                "wall_s": r["wall_s"],
            }
        )
    ratio = None
    if not args.skip_peer:
        ratio = results[0]["tokens_per_s"] / results[1]["tokens_per_s"]
        print(f"\nmoelab dense / transformers XGLM tokens/s: {ratio:.2f}x")
    print(
        json.dumps(
            {
                "benchmark": "gpu_check",
                "device": device_name,
                "peak_bf16_flops": peak,
                "torch": torch.__version__,
                "smoke": args.smoke,
                "steps": args.steps,
                "batch": args.batch,
                "seq_len": args.seq,
                "results": figures,
                "dense_vs_xglm_tokens_per_s": ratio,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
