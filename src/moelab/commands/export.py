"""`moelab export RUN_DIR --to hf --out DIR`: a run as a Hugging Face model folder."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `moelab train`")
    parser.add_argument(
        "--to", choices=["hf"], default="hf", help="target format (hf: a transformers folder)"
    )
    parser.add_argument("--out", required=True, help="new (or empty) output folder")
    parser.add_argument("--step", type=int, help="checkpoint step (default newest)")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip reloading the export in transformers to compare logits",
    )


def run(args: argparse.Namespace) -> int:
    from moelab.interop.hf_export import export_hf

    res = export_hf(args.run_dir, args.out, step=args.step, verify=not args.no_verify)
    check = "not verified"
    if res.max_abs_logit_diff is not None:
        check = f"logits match moelab's (max |diff| {res.max_abs_logit_diff:.2g})"
    print(f"exported step {res.step} as {res.hf_class} to {res.out}; {check}")
    return 0
