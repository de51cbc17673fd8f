"""`moelab prepare`: tokenize text sources into per-domain shards (see docs/data.md)."""

from __future__ import annotations

import argparse
import sys

from moelab.commands import add_settings, settings_of
from moelab.data.prepare import PrepareSettings, prepare
from moelab.data.sources import SPEC_SYNTAX

# The library's names of arguments whose flag is called otherwise (the CLI shows the flag).
RENAMED = {"sources": "source"}


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
        help="include the built-in standard-library corpus (default: only when no --source)",
    )
    add_settings(
        parser,
        PrepareSettings,
        {
            "vocab_size": "BPE vocabulary size",
            "seed": "seed of the train/val split",
            "val_fraction": "share of a domain held for validation",
            "val_max_bytes": "cap on a validation split's text",
            "max_doc_bytes": "longer documents are cut",
            "builtin_max_bytes": "text per built-in training domain (held-out: a quarter)",
        },
    )
    parser.add_argument(
        "--tokenizer",
        metavar="FILE",
        help="use this tokenizer.json instead of training a BPE",
    )
    parser.add_argument("--workers", type=int, metavar="N", default=1, help="tokenizer processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    result = prepare(
        args.out,
        args.source,
        args.heldout,
        settings_of(args, PrepareSettings),
        builtin=args.builtin,
        tokenizer=args.tokenizer,
        workers=args.workers,
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
