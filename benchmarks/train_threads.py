"""Training tokens/s against torch's thread count, on an idle machine and with cores kept busy.

The measurement behind ``train.threads`` (issue 18 item 7): on a machine whose other core was
busy, torch's default (one thread per core) trained 4-25x slower than one thread, because its
threads wait for each other at every parallel region and one of them shares a core. This script
runs moelab's own ``train_step`` (forward, loss, backward, AdamW) on fixed random tokens for
each thread count, first with nothing else running, then with ``--busy`` processes spinning on
the CPU (stand-ins for another job), and prints tokens/s per case.

Run it on an otherwise idle machine (its numbers are the point):

    python benchmarks/train_threads.py                      # dense-cpu-0.5m and moe-cpu-0.5m
    python benchmarks/train_threads.py --presets moe-cpu-2m --threads 1 2 4 --busy 1
    python benchmarks/train_threads.py --smoke --busy 0     # tiny, seconds: checks it runs
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time

import torch

from moelab.model import build_model
from moelab.presets import get_preset
from moelab.train.config import TrainConfig
from moelab.train.optim import build_optimizer
from moelab.train.step import train_step


def _spin() -> None:  # a busy core: another job on the machine
    while True:
        pass


def tokens_per_s(preset: str, threads: int, steps: int, batch: int, seq: int, smoke: bool):
    cfg = get_preset(preset)
    cfg.vocab_size = 512
    if smoke:
        cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_ffn = 2, 32, 2, 64
    cfg.max_seq_len = max(cfg.max_seq_len, seq)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(cfg, seed=0).train()
    optimizer = build_optimizer(model, TrainConfig(budget_steps=steps, lr=1e-3))
    params = [p for p in model.parameters() if p.requires_grad]
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1))

    def step() -> None:
        train_step(
            model,
            tokens,
            optimizer,
            params,
            micro_batch=batch,
            aux_loss_weight=cfg.aux_loss_weight,
        )

    step()  # warm-up (allocations, first-call dispatch)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * seq * steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cores = os.cpu_count() or 1
    parser.add_argument("--presets", nargs="+", default=["dense-cpu-0.5m", "moe-cpu-0.5m"])
    parser.add_argument(
        "--threads", nargs="+", type=int, default=sorted({1, 2, cores}), help="thread counts"
    )
    parser.add_argument("--busy", type=int, default=1, help="spinning processes, second pass")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and steps")
    parser.add_argument("--json", action="store_true", help="one JSON line per case")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.batch, args.seq = 2, 2, 16
    print(f"{cores} cores; torch default threads {torch.get_num_threads()}")
    for busy in [0] + ([args.busy] if args.busy else []):
        spinners = [mp.Process(target=_spin, daemon=True) for _ in range(busy)]
        for p in spinners:
            p.start()
        try:
            for preset in args.presets:
                for threads in args.threads:
                    tps = tokens_per_s(
                        preset, threads, args.steps, args.batch, args.seq, args.smoke
                    )
                    row = {"preset": preset, "busy": busy, "threads": threads, "tokens_per_s": tps}
                    if args.json:
                        print(json.dumps(row))
                    else:
                        print(f"{preset:16s} busy {busy}  threads {threads:3d}  {tps:10,.0f} tok/s")
        finally:
            for p in spinners:
                p.terminate()
                p.join()


if __name__ == "__main__":
    main()
