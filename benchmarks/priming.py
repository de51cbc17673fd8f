"""Priming throughput of moelab: items per second on real tasks, packed vs shared contexts.

Builds a freshly initialised model from a CPU preset (weights do not change the speed), trains
a byte-level BPE on the task texts, and times ``moelab.eval.priming.evaluate_task`` zero-shot
and few-shot, with every candidate as its own packed sequence and with every shared context run
once into a KV cache (``min_shared_tokens=1``; the library default only shares contexts that
save >= 1024 tokens). The lm-evaluation-harness comparison is added by the interop benchmark.

    python benchmarks/priming.py [--presets dense-cpu-0.5m,moe-cpu-0.5m] [--limit 20] [--shots 4]

Prints a table and, as the last line, one JSON object with the figures. Other processes may
share the CPU: compare numbers measured in the same run only.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch


def build_tokenizer(tasks, vocab_size: int):
    from moelab.data.tokenizer import train_bpe

    texts = []
    for task in tasks:
        for item in task.items[:2000] + (task.train_items or [])[:2000]:
            texts += [c + k for c, k in item.candidates()]
    return train_bpe(texts, vocab_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="dense-cpu-0.5m,moe-cpu-0.5m")
    parser.add_argument("--tasks", default="copa,piqa,hellaswag")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--tasks-dir", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

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
        f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; other processes may share the CPU"
    )
    print(
        f"{'preset':14} {'task':10} {'shots':>5} {'contexts':8} {'items':>6} {'seconds':>8} "
        f"{'items/s':>8} {'fwd tokens':>10}"
    )
    for p, t, k, mode, n, dt, ips, toks in rows:
        print(f"{p:14} {t:10} {k:5d} {mode:8} {n:6d} {dt:8.2f} {ips:8.1f} {toks:10d}")
    print(
        json.dumps(
            {
                "benchmark": "priming",
                "limit": args.limit,
                "shots": args.shots,
                "seeds": args.seeds,
                "figures": figures,
            }
        )
    )


if __name__ == "__main__":
    main()
