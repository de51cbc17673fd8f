"""`moelab upcycle DENSE_RUN --experts E [--top-k K] --out NEW_RUN`: a trained dense run as the
start of an MoE run (every expert a copy of the dense FFN), which `moelab train --out NEW_RUN`
then trains. See docs/upcycle.md."""

from __future__ import annotations

import argparse

RENAMED = {"overrides": "set"}  # the library's argument -> this command's flag (--set)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="DENSE_RUN", help="a dense run folder (moelab train)")
    parser.add_argument(
        "--experts", type=int, required=True, metavar="E", help="experts per MoE layer"
    )
    parser.add_argument("--top-k", type=int, default=2, metavar="K", help="experts per token (2)")
    parser.add_argument("--out", required=True, metavar="NEW_RUN", help="new run folder")
    parser.add_argument("--step", type=int, default=None, help="dense checkpoint (default newest)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a routing or train key of the new run, e.g. --set train.budget_tokens=1e6 "
        "--set model.moe_every=1 (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    from moelab.upcycle import upcycle

    res = upcycle(
        args.run_dir,
        args.out,
        experts=args.experts,
        top_k=args.top_k,
        step=args.step,
        overrides=args.set,
    )
    print(
        f"upcycled {args.run_dir} step {res.dense_step} ({res.dense_flops:.3e} training FLOPs) "
        f"into {res.out}: {args.experts} experts, top-{args.top_k}, MoE layers {res.moe_layers}; "
        f"logits match the dense run's (max |diff| {res.max_abs_logit_diff:.2g}); "
        f"train it with: moelab train --out {res.out}"
    )
    return 0
