"""`moelab study`: run a compute-matched dense vs MoE grid and write the report."""

from __future__ import annotations

import shlex


def add_arguments(parser) -> None:
    parser.add_argument(
        "config",
        nargs="?",
        default=None,
        help="study YAML (default: the built-in study on the built-in corpus)",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="study folder: runs, results table, report (rerun to resume)",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print every run's parameters, FLOPs, tokens and estimated time, then stop",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a study key, e.g. --set eval.limit=50 --set grid.seed=[1,2] (repeatable)",
    )


def run(args) -> int:
    from moelab.study.config import load_study
    from moelab.study.sweep import run_study

    cfg = load_study(args.config, args.set)
    words = ["moelab", "study"] + ([args.config] if args.config else []) + ["--out", args.out]
    for item in args.set:
        words += ["--set", item]
    run_study(cfg, args.out, plan_only=args.plan, command=shlex.join(words))
    return 0
