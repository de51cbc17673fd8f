"""`moelab generate RUN_DIR --prompt TEXT`: sample a continuation with the KV cache."""

from __future__ import annotations

import argparse
import sys

from moelab.commands import add_settings, settings_of
from moelab.generate import Sampling, generate_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `moelab train`")
    parser.add_argument("--prompt", required=True, help="text to continue")
    helps = {
        "max_new_tokens": "new tokens",
        "temperature": "0 = greedy",
        "top_k": "keep the k likeliest (0 = all)",
        "top_p": "nucleus mass (1.0 = all)",
        "seed": "sampling seed",
    }
    add_settings(parser, Sampling, helps, flags={"max_new_tokens": "--max-tokens"})
    parser.add_argument("--step", type=int, help="checkpoint step (default newest)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")


def run(args: argparse.Namespace) -> int:
    loaded: list[dict] = []
    text = generate_text(
        args.run_dir,
        args.prompt,
        settings_of(args, Sampling),
        step=args.step,
        device=args.device,
        on_loaded=loaded.append,
    )
    print(args.prompt + text)
    # stderr: stdout is the text; after success only, so a refusal stays one line
    print(f"{args.run_dir}: checkpoint step {loaded[0].get('step')}", file=sys.stderr)
    return 0
