"""`moelab prepare`: tokenize text sources into per-domain shards (see docs/data.md)."""

from __future__ import annotations

import argparse
import sys

from moelab.data.builtin import DEFAULT_MAX_BYTES
from moelab.data.sources import SPEC_SYNTAX


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="DOMAIN=PATH_OR_GLOB",
        help=f"a training domain (repeatable): {SPEC_SYNTAX}. None: the built-in corpus",
    )
    parser.add_argument(
        "--heldout",
        action="append",
        default=[],
        metavar="DOMAIN=PATH_OR_GLOB",
        help="an evaluation-only domain (repeatable), same syntax; it gets only a 'val' split",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (created; never overwritten)"
    )
    parser.add_argument(
        "--builtin",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="include the built-in standard-library corpus (default: only when no --source)",
    )
    parser.add_argument(
        "--vocab-size", type=int, metavar="N", default=4096, help="BPE vocabulary size"
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        metavar="FILE",
        help="use this tokenizer.json instead of training a BPE",
    )
    parser.add_argument("--workers", type=int, metavar="N", default=1, help="tokenizer processes")
    parser.add_argument(
        "--seed", type=int, metavar="N", default=0, help="seed of the train/val split"
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        default=0.05,
        help="share of a domain held for validation",
    )
    parser.add_argument(
        "--val-max-bytes",
        type=int,
        metavar="N",
        default=1 << 19,
        help="cap on a validation split's text",
    )
    parser.add_argument(
        "--max-doc-bytes", type=int, metavar="N", default=1 << 15, help="longer documents are cut"
    )
    parser.add_argument(
        "--builtin-max-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        metavar="N",
        help="text per built-in training domain (held-out: a quarter)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from moelab.data.prepare import prepare

    result = prepare(
        args.out,
        args.source,
        args.heldout,
        builtin=args.builtin,
        vocab_size=args.vocab_size,
        tokenizer=args.tokenizer,
        workers=args.workers,
        seed=args.seed,
        val_fraction=args.val_fraction,
        val_max_bytes=args.val_max_bytes,
        max_doc_bytes=args.max_doc_bytes,
        builtin_max_bytes=args.builtin_max_bytes,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    if not result.created:
        print(f"{result.path} is up to date (same inputs and settings; verified)")
    tok = result.manifest["tokenizer"]
    print(f"{result.path}: vocab {tok['vocab_size']}, dtype {result.manifest['dtype']}")
    print(f"{'domain':<16} {'role':<8} {'split':<6} {'documents':>10} {'tokens':>12}")
    for domain, role, split, docs, tokens in result.summary_rows():
        print(f"{domain:<16} {role:<8} {split:<6} {docs:>10,} {tokens:>12,}")
    return 0
