"""`moelab study`: run a compute-matched dense vs MoE grid and write the report."""

from __future__ import annotations

import shlex

from moelab.errors import MoelabError


def add_arguments(parser) -> None:
    parser.add_argument(
        "config",
        nargs="?",
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
    parser.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="train N runs at once, each in its own process: the study file's `workers` "
        "(this flag overrides it, like --set workers=N); on CPU each gets 1/N of the cores",
    )
    parser.add_argument(
        "--devices",
        action="append",
        default=[],
        metavar="IDS",
        help="a CUDA device set for one job, e.g. --devices 0,1 --devices 2,3 (two jobs, two "
        "GPUs each), or one list that --jobs N cuts into N sets (--devices 0-7 --jobs 4); a "
        "set of several devices trains each run on all of them with torchrun",
    )
    parser.add_argument(
        "--emit",
        nargs=2,
        metavar=("slurm", "DIR"),
        help="set the study folder up (data, plan) and write a Slurm array script to DIR "
        "(one task per run, then a dependent `moelab report`) instead of training",
    )
    parser.add_argument(
        "--procs-per-run",
        type=int,
        default=1,
        metavar="K",
        help="with --emit or --only: processes (GPUs) each run trains on; K > 1 launches "
        "`moelab train` with torchrun (default 1)",
    )
    parser.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="OPTION",
        help="with --emit: an #SBATCH line for the scripts, e.g. --sbatch=--time=04:00:00",
    )
    parser.add_argument(
        "--only",
        metavar="RUN",
        help="train and evaluate this one run of a study set up by --emit, without the study "
        "lock or report (what each Slurm array task runs)",
    )


def _check_flags(args) -> None:
    if args.jobs is not None and args.jobs < 1:
        raise MoelabError(f"--jobs: must be >= 1, got {args.jobs}")
    if args.procs_per_run < 1:
        raise MoelabError(f"--procs-per-run: must be >= 1, got {args.procs_per_run}")
    if args.emit and args.emit[0] != "slurm":
        raise MoelabError(f"--emit {args.emit[0]}: the one scheduler supported is slurm")
    given = (("--plan", args.plan), ("--emit", args.emit), ("--only", args.only))
    modes = [flag for flag, on in given if on]
    if len(modes) > 1:
        raise MoelabError(f"{' and '.join(modes)}: give one of them")
    if (args.emit or args.only) and (args.jobs is not None or args.devices):
        raise MoelabError("--jobs and --devices are for a local study, not --emit or --only")
    if args.procs_per_run > 1 and not (args.emit or args.only):
        raise MoelabError("--procs-per-run: with --emit or --only (locally: --devices sets)")
    if args.sbatch and not args.emit:
        raise MoelabError("--sbatch: only with --emit slurm DIR")


def run(args) -> int:
    import sys
    from pathlib import Path

    from moelab.study.plan.config import load_study
    from moelab.study.run.launch import check_devices_exist, device_sets
    from moelab.study.run.sweep import run_study
    from moelab.train.stop import TrainingStopped

    _check_flags(args)
    sets = device_sets(args.devices, args.jobs)
    jobs = len(sets) if sets else args.jobs
    overrides = list(args.set) + ([f"workers={jobs}"] if jobs is not None else [])
    cfg = load_study(args.config, overrides)
    words = ["moelab", "study"] + ([args.config] if args.config else []) + ["--out", args.out]
    words += [w for item in args.set for w in ("--set", item)]
    words += ["--jobs", str(args.jobs)] if args.jobs is not None else []
    words += [w for d in args.devices for w in ("--devices", d)]
    try:
        if args.only:
            from moelab.study.run.task import run_only

            run_only(cfg, args.out, args.only, procs=args.procs_per_run)
            return 0
        emit = None
        if args.emit:
            from moelab.study.run.slurm import emit_slurm

            dest = Path(args.emit[1])
            if dest.exists() and not dest.is_dir():
                raise MoelabError(f"--emit slurm {dest}: exists and is not a folder")
            words += ["--emit", *args.emit]

            def emit(plan):
                files = emit_slurm(
                    plan,
                    Path(args.out),
                    dest,
                    name=cfg.name,
                    procs=args.procs_per_run,
                    extra=args.sbatch,
                )
                print(f"wrote {', '.join(str(f) for f in files)}; submit with {files[-1]}")

        if sets and not args.plan and not args.emit:
            check_devices_exist(sets)
        run_study(
            cfg,
            args.out,
            plan_only=args.plan,
            command=shlex.join(words),
            devices=sets,
            emit=emit,
        )
    except TrainingStopped as e:  # SIGTERM / SIGINT while a run trained in this process
        print(f"{e}; rerunning this study command resumes the study", file=sys.stderr)
        return e.exit_code
    return 0
