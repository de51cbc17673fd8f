"""`moelab plan PRESET`: memory per GPU and step time of a preset on a cluster shape, on paper
(moelab/capacity.py; docs/plan.md has the method and worked examples)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("preset", metavar="PRESET", help="a model preset (`moelab presets`)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    parser.add_argument(
        "--gpu-memory", type=float, default=80.0, metavar="GIB", help="GiB per GPU (default 80)"
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=312.0,
        metavar="T",
        help="peak dense TFLOP/s per GPU in the compute dtype (default 312, A100 bf16)",
    )
    parser.add_argument(
        "--ep",
        type=int,
        help="expert-parallel degree (default gcd(GPUs, experts), as `moelab train`; 1 if dense)",
    )
    parser.add_argument(
        "--micro-batch", type=int, default=1, metavar="B", help="sequences per GPU (default 1)"
    )
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default: the preset's)")
    parser.add_argument(
        "--grad-accum", type=int, default=1, metavar="N", help="micro-steps per step (default 1)"
    )
    parser.add_argument(
        "--no-checkpointing",
        action="store_true",
        help="keep every activation (default: activation checkpointing, as the paper)",
    )
    parser.add_argument("--fp32", action="store_true", help="fp32 compute (default bf16)")
    parser.add_argument(
        "--mfu", type=float, default=0.3, help="assumed model FLOPs utilisation (default 0.3)"
    )
    parser.add_argument("--tokens", type=float, help="also give the time to train this many tokens")


def run(args: argparse.Namespace) -> int:
    import math

    from moelab.capacity import Cluster, Layout, report
    from moelab.presets import get_preset

    cfg = get_preset(args.preset)
    cluster = Cluster(args.nodes, args.gpus_per_node, args.gpu_memory, args.peak_tflops)
    ep = args.ep
    if ep is None:
        ep = math.gcd(max(cluster.world, 1), cfg.n_experts) if cfg.is_moe else 1
    layout = Layout(
        ep=ep,
        micro_batch=args.micro_batch,
        seq_len=args.seq_len if args.seq_len is not None else cfg.max_seq_len,
        activation_checkpointing=not args.no_checkpointing,
        grad_accum=args.grad_accum,
        bf16=not args.fp32,
    )
    print(report(cfg, cluster, layout, args.mfu, args.tokens))
    return 0
