"""`moelab train`: train a model under a compute budget; resumes when RUN_DIR has a checkpoint.

moelab train CONFIG.yaml --out RUN_DIR [--set train.lr=3e-4 ...]
moelab train --preset NAME --data DIR --budget-tokens N --out RUN_DIR
    (or --budget-flops F, or --steps N)
moelab train --out RUN_DIR            # resume a run with the config.yaml stored in it
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from moelab.errors import MoelabError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="run config (YAML)")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.lr=3e-4 (repeatable)",
    )
    parser.add_argument("--preset", help="model preset (see `moelab presets`)")
    parser.add_argument("--data", metavar="DIR", help="prepared data folder (moelab prepare)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget-tokens", type=float, metavar="N", help="training tokens")
    budget.add_argument(
        "--budget-flops", type=float, metavar="F", help="training FLOPs (paper accounting)"
    )
    budget.add_argument("--steps", type=int, metavar="N", help="optimizer steps")
    parser.add_argument("--no-progress", action="store_true", help="no live progress bar")


def build_raw_config(args: argparse.Namespace) -> dict:
    from moelab.config import load_yaml
    from moelab.train.rundir import CONFIG, with_data_dir_from

    own = Path(args.out) / CONFIG
    given_own = bool(args.config) and own.is_file() and Path(args.config).is_file()
    given_own = given_own and own.samefile(args.config)
    if args.config and not given_own:
        raw = load_yaml(args.config)
        holder = Path(args.config).parent
        if Path(args.config).name == CONFIG and (holder / "checkpoints").is_dir():
            # another run's stored config: its relative data.dir is relative to that run folder
            raw = with_data_dir_from(raw, holder)
    elif (args.config or not args.preset) and own.is_file():
        # resume with the run's own config (a study run's data.dir is relative to its folder)
        raw = with_data_dir_from(load_yaml(own), Path(args.out))
    else:
        raw = {}
    if args.preset:
        raw["model"] = args.preset
    if args.data:
        raw["data"] = args.data
    flags = {
        "budget_tokens": args.budget_tokens,
        "budget_flops": args.budget_flops,
        "budget_steps": args.steps,
    }
    chosen = {k: v for k, v in flags.items() if v is not None}
    if chosen:
        train = dict(raw.get("train") or {})
        for key in flags:
            train.pop(key, None)
        # As given: the config loader turns an integral float (1e6) into an int and refuses
        # nan, inf or 1e400 in one line (an int() here would be a traceback).
        train.update(chosen)
        raw["train"] = train
    if not raw:
        raise MoelabError(
            "give a CONFIG.yaml, or --preset NAME --data DIR and a budget "
            "(--budget-tokens, --budget-flops or --steps)"
        )
    return raw


def run(args: argparse.Namespace) -> int:
    import sys

    from moelab.train import load_run_config, train
    from moelab.train.stop import TrainingStopped

    cfg = load_run_config(build_raw_config(args), args.set)
    try:
        summary = train(cfg, args.out, progress=not args.no_progress)
    except TrainingStopped as e:  # SIGTERM / SIGINT: saved, one line, 128 + signal number
        print(str(e), file=sys.stderr)
        return e.exit_code
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun the summary line is printed once, by rank 0
    val = summary.get("val_loss") or {}
    shown = ", ".join(f"{d} {v:.4f}" for d, v in val.items())
    loss = summary.get("final_train_loss")
    print(
        f"done: {summary['steps']} steps, {summary['tokens']:,} tokens, "
        f"{summary['flops']:.3e} FLOPs (paper accounting), train loss "
        f"{loss if loss is None else round(loss, 4)}" + (f"; val loss {shown}" if shown else "")
    )
    return 0
