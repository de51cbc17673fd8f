"""One run of a study on its own: ``moelab study STUDY.yaml --out S --only NAME``, what each
task of a Slurm array (study/run/slurm.py) runs.

It does for one run what the study does for each: skip it when finished or recorded as
diverged, train it (resuming from its newest checkpoint; under torchrun with
``--procs-per-run K > 1``), record a divergence, evaluate it into ``study_eval.json``. It takes
no study lock (the array's tasks run side by side; training takes the run folder's own lock),
prepares no data (the study folder must have been set up by ``--emit``) and writes no report
(a dependent job runs ``moelab report``).
"""

from __future__ import annotations

from pathlib import Path

from moelab.errors import MoelabError
from moelab.study.plan.config import StudyConfig
from moelab.study.plan.layout import RunState, eval_key, run_dir, run_state
from moelab.study.results.diverged import read_divergence
from moelab.study.run.sweep import (
    Echo,
    _check_same_config,
    _evaluate_one,
    _print,
    build_plan,
    prepared_dir,
    train_run,
)


def run_only(
    cfg: StudyConfig, out_dir: str | Path, name: str, *, procs: int = 1, echo: Echo = _print
) -> None:
    out = Path(out_dir)
    data_dir = prepared_dir(cfg, out)
    if not (data_dir / "manifest.json").is_file():
        raise MoelabError(
            f"--only: {data_dir} holds no prepared data; set the study folder up first "
            "(moelab study ... --emit slurm DIR prepares it)"
        )
    plan = build_plan(cfg, out, measure=False)
    planned = next((p for p in plan if p.name == name), None)
    if planned is None:
        names = ", ".join(p.name for p in plan[:6]) + (", ..." if len(plan) > 6 else "")
        raise MoelabError(f"--only {name}: not a run of this study (its runs: {names})")
    path = run_dir(out, name)
    _check_same_config(path, planned)
    if read_divergence(path) is not None:
        echo(f"{name}: diverged before; skipped (delete {path}/diverged.json to retry)")
        return
    key = eval_key(cfg.eval)
    state = run_state(path, key)
    if state is RunState.FINISHED:
        echo(f"{name}: already trained and evaluated")
        return
    train_s = 0.0
    if state in (RunState.NEW, RunState.INTERRUPTED):
        verb = "resuming" if state is RunState.INTERRUPTED else "training"
        on = f" on {procs} processes (torchrun)" if procs > 1 else ""
        echo(f"{verb} {name} ({planned.family}, {planned.tokens:,} tokens){on}")
        train_s, diverged = train_run(planned, path, procs)
        if diverged:
            echo(diverged)
            return
    echo(f"evaluating {name}")
    _evaluate_one(cfg, planned, path, key, train_s, echo)
