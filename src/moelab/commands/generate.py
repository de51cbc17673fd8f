"""`moelab generate RUN_DIR --prompt TEXT`: sample a continuation with the KV cache."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `moelab train`")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-tokens", type=int, default=100, help="new tokens (default 100)")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k likeliest (0 = all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (1.0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default newest)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")


def run(args: argparse.Namespace) -> int:
    from moelab.generate import generate_text

    loaded: list[dict] = []
    text = generate_text(
        args.run_dir,
        args.prompt,
        max_new_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        step=args.step,
        device=args.device,
        on_loaded=loaded.append,
    )
    print(args.prompt + text)
    # stderr: stdout is the text; after success only, so a refusal stays one line
    print(f"{args.run_dir}: checkpoint step {loaded[0].get('step')}", file=sys.stderr)
    return 0
