"""`moelab import HF_DIR --out RUN_DIR`: a Hugging Face model folder as a moelab run."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "hf_dir", metavar="HF_DIR", help="a transformers model folder with tokenizer.json"
    )
    parser.add_argument("--out", required=True, help="new (or empty) run folder")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip comparing logits with transformers"
    )


def run(args: argparse.Namespace) -> int:
    from moelab.interop.hf_import import import_hf

    res = import_hf(args.hf_dir, args.out, verify=not args.no_verify)
    check = "not verified"
    if res.max_abs_logit_diff is not None:
        check = f"logits match (max |diff| {res.max_abs_logit_diff:.2g})"
    print(f"imported {res.hf_class} into {res.out}; {check}")
    return 0
