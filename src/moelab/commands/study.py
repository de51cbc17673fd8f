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
    import sys

    from moelab.study.config import load_study
    from moelab.study.sweep import run_study
    from moelab.train.stop import TrainingStopped

    cfg = load_study(args.config, args.set)
    words = ["moelab", "study"] + ([args.config] if args.config else []) + ["--out", args.out]
    for item in args.set:
        words += ["--set", item]
    try:
        run_study(cfg, args.out, plan_only=args.plan, command=shlex.join(words))
    except TrainingStopped as e:  # SIGTERM / SIGINT while a run trained in this process
        print(f"{e}; rerunning this study command resumes the study", file=sys.stderr)
        return e.exit_code
    return 0
