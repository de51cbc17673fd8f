"""Priming throughput: moelab's ``evaluate_task`` vs lm-evaluation-harness's HF backend.

Part 1 (the comparison): a tiny model is built and exported with ``moelab export`` exactly as
``benchmarks/harness_throughput.py`` does (its helpers are reused), and one synthetic
multiple-choice task (4 choices per item) is written both as moelab's generic JSONL and as a
local harness task YAML over that same file. Timed, alternating, best round counts:

- moelab: ``moelab.eval.priming.evaluate_task`` (what ``moelab eval --task`` runs) on the
  moelab run, zero-shot, library defaults (every scoring mode, calibration prompts included);
- harness: ``lm_eval.simple_evaluate`` with the ``hf`` model (``HFLM``) on the exported folder.

Same items, same batch size: the harness takes ``--batch-size`` sequences per batch; moelab packs
by tokens, so it gets ``batch_tokens = batch size x longest sequence`` (at least that many
sequences per batch). One torch thread by default. The sum-of-log-probs scores of both are
compared per candidate, and moelab's ``sum``/``char`` accuracies against the harness's
``acc``/``acc_norm``.

Part 2 (absolute, ``--absolute``; needs ../shared/data): items/s on real tasks with a preset
model, zero- and few-shot, every candidate packed vs every shared context in a KV cache
(``min_shared_tokens=1``; the library default only shares contexts saving >= 1024 tokens).

    python benchmarks/priming.py --items 100                       # part 1 only
    python benchmarks/priming.py --items 100 --absolute --limit 20 # both

Prints tables and, as the last line, one JSON object with the figures. Other processes may
share the CPU: compare numbers measured in the same run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness_throughput as harness  # noqa: E402  (its model/export/task/run helpers)


def build_tokenizer(tasks, vocab_size: int):
    from moelab.data.tokenizer import train_bpe

    texts = []
    for task in tasks:
        for item in task.items[:2000] + (task.train_items or [])[:2000]:
            texts += [c + k for c, k in item.candidates()]
    return train_bpe(texts, vocab_size)


def absolute(args) -> dict:
    """Part 2: items/s of evaluate_task on real tasks, packed vs shared contexts."""
    from moelab.eval.priming import evaluate_task
    from moelab.eval.tasks import get_task
    from moelab.model import build_model
    from moelab.presets import get_preset

    tasks = [get_task(name, args.tasks_dir) for name in args.tasks.split(",")]
    tok = build_tokenizer(tasks, args.vocab)
    rows, figures = [], {}
    for preset in args.presets.split(","):
        cfg = get_preset(preset)
        cfg.vocab_size = tok.get_vocab_size()
        cfg.max_seq_len = 512
        model = build_model(cfg, seed=0).to(args.device).eval()
        for task in tasks:
            for shots, seeds in ((0, 1), (args.shots, args.seeds)):
                accs = {}
                for share in (False, True):
                    t0 = time.perf_counter()
                    r = evaluate_task(
                        model,
                        tok,
                        task,
                        shots,
                        seeds,
                        args.limit,
                        share_contexts=share,
                        min_shared_tokens=1,
                        bootstrap=10,
                    )
                    dt = time.perf_counter() - t0
                    ips = r["n_items"] * len(r["seeds"]) / dt
                    key = f"{preset}/{task.name}/{shots}shot/{'shared' if share else 'packed'}"
                    figures[key] = {
                        "items_per_s": ips,
                        "forward_tokens": r["compute"]["forward_tokens"],
                    }
                    accs[share] = r["metrics"]
                    rows.append(
                        (
                            preset,
                            task.name,
                            shots,
                            "shared" if share else "packed",
                            r["n_items"] * len(r["seeds"]),
                            dt,
                            ips,
                            r["compute"]["forward_tokens"],
                        )
                    )
                agree = all(
                    abs(accs[False][m]["mean"] - accs[True][m]["mean"]) < 1e-9 for m in accs[False]
                )
                figures[f"{preset}/{task.name}/{shots}shot/modes_agree"] = agree
    print(
        f"{'preset':14} {'task':10} {'shots':>5} {'contexts':8} {'items':>6} {'seconds':>8} "
        f"{'items/s':>8} {'fwd tokens':>10}"
    )
    for p, t, k, mode, n, dt, ips, toks in rows:
        print(f"{p:14} {t:10} {k:5d} {mode:8} {n:6d} {dt:8.2f} {ips:8.1f} {toks:10d}")
    return figures


def longest_sequence(tokenizer, task) -> int:
    return max(
        len(tokenizer.encode(c + k).ids) for item in task.items for c, k in item.candidates()
    )


def moelab_vs_harness(args) -> dict:
    """Part 1: the same exported model and task through evaluate_task and the harness's hf."""
    import datasets
    import lm_eval.evaluator
    import transformers
    from lm_eval.models.huggingface import HFLM

    from moelab.eval.priming import evaluate_task
    from moelab.eval.runs import open_run
    from moelab.eval.tasks.generic import load_generic
    from moelab.interop import export_hf

    lm_eval.evaluator.add_env_info = lambda results: None  # skip pip shell-out (both sides)
    datasets.disable_progress_bars()
    os.environ.setdefault("TQDM_DISABLE", "1")
    transformers.utils.logging.set_verbosity_error()
    model_args = argparse.Namespace(
        arch=args.arch, vocab=args.vocab, layers=args.layers, d_model=args.d_model,
        experts=args.experts,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="moelab_priming_bench_") as tmp:
        root = Path(tmp)
        run = harness.make_run(root, model_args, harness.make_tokenizer(root, args.vocab))
        exported = export_hf(run, root / "hf")
        task_name, task_dir = harness.make_task(root, args.items)
        task = load_generic(task_dir / "mc.jsonl")  # the file the harness YAML reads
        opened = open_run(run, device="cpu")
        longest = longest_sequence(opened.tokenizer, task)
        batch_tokens = args.batch_size * longest
        theirs = HFLM(
            pretrained=str(root / "hf"), batch_size=args.batch_size, device="cpu", dtype="float32"
        )
        times: dict[str, list[float]] = {"moelab": [], "hf": []}
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            ours = evaluate_task(
                opened.model, opened.tokenizer, task, 0, 1, batch_tokens=batch_tokens,
                keep_scores=True,
            )  # fmt: skip
            times["moelab"].append(time.perf_counter() - t0)
            t_hf, res_hf, ll_hf = harness.harness_run(theirs, task_name, task_dir)
            times["hf"].append(t_hf)
    best = {k: min(v) for k, v in times.items()}
    ips = {k: args.items / best[k] for k in best}
    ll_ours = np.array([item["sum"] for item in ours["scores"][0]])
    max_diff = float(np.abs(ll_ours - np.array(ll_hf)).max())
    m = ours["metrics"]
    print(
        f"moelab evaluate_task vs lm-eval hf: {args.items} items x 4 choices, zero-shot, "
        f"batch {args.batch_size} sequences (moelab: batch_tokens {batch_tokens} = "
        f"{args.batch_size} x longest {longest})"
    )
    print(
        f"model: {args.arch} L={args.layers} D={args.d_model} experts={args.experts} -> "
        f"HF class {exported.hf_class}; moelab also scores {ours['compute']['requests']} "
        f"requests incl. calibration ({ours['compute']['unique_sequences']} unique)"
    )
    print(f"{'backend':<26}{'best s':>9}{'items/s':>10}{'acc':>8}{'acc_norm':>10}")
    print(
        f"{'moelab evaluate_task':<26}{best['moelab']:>9.3f}{ips['moelab']:>10.1f}"
        f"{m['sum']['mean']:>8.3f}{m['char']['mean']:>10.3f}"
    )
    print(
        f"{'lm-eval hf (HFLM)':<26}{best['hf']:>9.3f}{ips['hf']:>10.1f}"
        f"{res_hf['acc,none']:>8.3f}{res_hf['acc_norm,none']:>10.3f}"
    )
    ratio = ips["moelab"] / ips["hf"]
    print(f"ratio moelab / hf items/s: {ratio:.2f}; max |sum log-prob diff| {max_diff:.2e}")
    return {
        "arch": args.arch,
        "experts": args.experts,
        "hf_class": exported.hf_class,
        "items": args.items,
        "batch_size": args.batch_size,
        "moelab_batch_tokens": batch_tokens,
        "moelab_items_per_s": ips["moelab"],
        "hf_items_per_s": ips["hf"],
        "ratio_moelab_over_hf": ratio,
        "moelab_seconds": times["moelab"],
        "hf_seconds": times["hf"],
        "same_acc": m["sum"]["mean"] == res_hf["acc,none"],
        "same_acc_norm": m["char"]["mean"] == res_hf["acc_norm,none"],
        "max_abs_sum_logprob_diff": max_diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["paper", "modern"], default="paper")
    parser.add_argument("--experts", type=int, default=0, help="0 = dense")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0 = default)")
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--absolute", action="store_true", help="also part 2 (real tasks)")
    parser.add_argument("--presets", default="dense-cpu-0.5m,moe-cpu-0.5m")
    parser.add_argument("--tasks", default="copa,piqa,hellaswag")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--tasks-dir", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; other processes may "
        "share the CPU"
    )
    out: dict = {"benchmark": "priming", "torch_threads": torch.get_num_threads()}
    out["vs_harness"] = moelab_vs_harness(args)
    if args.absolute:
        out["absolute"] = {
            "limit": args.limit,
            "shots": args.shots,
            "seeds": args.seeds,
            "figures": absolute(args),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
