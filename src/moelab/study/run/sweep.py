"""The grid runner: prepare the data, plan, then train and evaluate every run, skipping
finished runs and resuming interrupted ones, and finally write table, fits and report.

The unit of work is one run directory, and each run only reads the shared prepared data, so
runs go one after another in this process or several at once in worker processes (``workers``,
``moelab study --jobs N``), each job owning one device set when given (study/run/launch.py), or
each as its own task of a Slurm array (study/run/slurm.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from moelab.errors import MoelabError
from moelab.io import atomic_write_json, atomic_write_text
from moelab.lock import folder_lock
from moelab.progress import log_to_stderr, stderr_log_level
from moelab.study.plan.config import StudyConfig, study_to_dict
from moelab.study.plan.estimate import PlannedRun, fmt_seconds, format_plan, make_plan, makespan
from moelab.study.plan.grid import expand_grid
from moelab.study.plan.layout import (
    STUDY_EVAL,
    RunState,
    configs_dir,
    eval_key,
    read_study_eval,
    run_dir,
    run_state,
    runs_dir,
)
from moelab.study.results.diverged import (
    DIVERGED,
    diverged_runs,
    read_divergence,
    record_divergence,
)
from moelab.study.run import stopping
from moelab.study.run.data import prepare_study_data
from moelab.study.run.evaluate import evaluate_run
from moelab.train.stop import TrainingStopped, grace_seconds
from moelab.train.trainer import TrainingDiverged

Echo = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


def prepared_dir(cfg: StudyConfig, out_dir: Path) -> Path:
    if cfg.data.prepared:
        return Path(cfg.data.prepared).expanduser().resolve()
    return (out_dir / "data").resolve()


def eval_note(cfg: StudyConfig) -> str:
    ev = cfg.eval
    parts = []
    if ev.zero_shot:
        parts.append(f"zero-shot {', '.join(ev.zero_shot)}")
    if ev.few_shot:
        parts.append(f"{ev.shots}-shot {', '.join(ev.few_shot)} x {ev.seeds} seeds")
    if ev.finetune:
        parts.append(f"fine-tuning {', '.join(ev.finetune)}")
    if not parts:
        return "evaluation: validation loss per domain only"
    lim = f"{ev.limit} items per task" if ev.limit else "all items"
    if ev.limits:
        lim += "; " + ", ".join(f"{t}: {n}" for t, n in ev.limits.items())
        lim += " per paradigm" if set(ev.limits) == {"blimp"} else ""
    return "evaluation (not in the estimate): " + "; ".join(parts) + f" ({lim})"


def build_plan(cfg: StudyConfig, out_dir: Path, measure: bool | None = None) -> list[PlannedRun]:
    specs = expand_grid(cfg)
    data = prepared_dir(cfg, out_dir)
    vocab_size = cfg.data.vocab_size  # the prepared tokenizer's once it exists
    if (data / "manifest.json").is_file():
        from moelab.train.config import open_prepared

        vocab_size = int(open_prepared(data).vocab_size)
    with _torch_threads(cfg.threads):  # a measurement times training steps
        plan = make_plan(
            specs,
            data_dir=str(data),
            vocab_size=vocab_size,
            flops_per_second=cfg.flops_per_second,
            measure=cfg.measure_throughput if measure is None else measure,
        )
    for p in plan:  # the study's thread count trains every run that does not set its own
        if "threads" not in (p.spec.run_config.get("train") or {}):
            p.run_config.train.threads = cfg.threads
        if p.upcycle:  # where its dense run is, as moelab upcycle records it
            p.run_config.upcycled_from.run = str(run_dir(out_dir, p.upcycle["dense"]).resolve())
    return plan


def _plan_json(plan: list[PlannedRun]) -> list[dict[str, Any]]:
    return [
        {
            "run": p.name,
            "family": p.family,
            "preset": p.preset,
            "values": p.spec.values,
            "params_total": p.params.total,
            "params_active": p.params.active,
            "steps": p.steps,
            "tokens": p.tokens,
            "train_flops": p.train_flops,
            "tokens_per_param": p.tokens / p.params.active,
            "est_seconds": p.est_seconds,
            "throughput": p.throughput_source,
        }
        for p in plan
    ]


def _check_same_config(path: Path, planned: PlannedRun) -> None:
    """A run folder trained with other settings is never silently reused."""
    from moelab.train.config import config_differences, load_run_config

    cfg_file = path / "config.yaml"
    if not cfg_file.is_file():
        return
    old = load_run_config(cfg_file, check_data=False)
    diffs = config_differences(old, planned.run_config)  # data.dir never counts (fingerprint)
    if diffs:
        raise MoelabError(
            f"{path} was trained with a different config ({diffs[0]}); "
            "use another --out folder or delete that run folder"
        )


def _check_kept(out: Path, planned: PlannedRun) -> None:
    """An upcycled run not made yet whose dense run is done, or past its step N, without
    checkpoint N (trained before the entry: keep_last rotated it away) is refused up front."""
    from moelab.train.checkpoint import list_checkpoints, step_dir
    from moelab.train.rundir import DONE

    up = planned.upcycle
    dense = run_dir(out, up["dense"]) if up else None
    if not dense or run_dir(out, planned.name).exists() or step_dir(dense, up["step"]).is_dir():
        return
    kept = [c.step for c in list_checkpoints(dense)]
    if (dense / DONE).is_file() or (kept and kept[-1] > up["step"]):
        raise MoelabError(
            f"{planned.name}: its dense run {dense} no longer has its checkpoint at step "
            f"{up['step']} (train.keep_last rotated it away; it has steps "
            f"{', '.join(map(str, kept)) or 'none'}): delete {dense} to train it again, "
            "or upcycle at a step it has"
        )


# A run folder's name plus its lock file's longest suffix (".NAME.lock.break") must fit the
# 255-byte file name limit of common filesystems.
MAX_RUN_NAME_BYTES = 255 - len("..lock.break")


def start_upcycled(planned: PlannedRun, path: Path) -> None:
    """An upcycled run's folder, before its first training: ``moelab upcycle`` of its dense
    run's checkpoint (study/plan/estimate.py, upcycled_run). A diverged dense run makes the
    upcycled one diverged too."""
    up = planned.upcycle
    if up is None or path.exists():
        return
    from moelab.train.checkpoint import step_dir
    from moelab.upcycle import upcycle

    dense = path.parent / up["dense"]
    if read_divergence(dense) is not None:
        path.mkdir(parents=True)
        raise TrainingDiverged(f"its dense run {up['dense']} diverged")
    if not step_dir(dense, up["step"]).is_dir():  # a Slurm array task can come first
        raise MoelabError(
            f"{planned.name}: its dense run {dense} has no checkpoint at step {up['step']} "
            "(yet): train the dense run first, then this one"
        )
    try:
        upcycle(dense, path, **{k: v for k, v in up.items() if k != "dense"})
    except MoelabError as e:
        raise MoelabError(f"{planned.name}: upcycling {dense} at step {up['step']}: {e}") from None


def run_study(
    cfg: StudyConfig,
    out_dir: str | Path,
    *,
    plan_only: bool = False,
    echo: Echo = _print,
    command: str | None = None,
    devices: list[list[str]] | None = None,
    emit: Callable[[list[PlannedRun]], None] | None = None,
) -> list[PlannedRun]:
    """Run (or, with ``plan_only``, only print the plan of) a study in ``out_dir``.

    ``devices``: one CUDA device set per worker (``cfg.workers`` of them). ``emit``: prepare
    the study folder and its data, then hand the plan to ``emit`` (which writes a scheduler's
    scripts, study/run/slurm.py) instead of training.

    Everything that can be checked without writing is checked first (every run config, and
    that existing run folders hold the same runs); a study refused while its data is being
    prepared leaves no ``out_dir`` behind if this call created it."""
    out = Path(out_dir)
    started = (time.time(), time.perf_counter())
    if devices and len(devices) != cfg.workers:  # each worker takes one set and waits for it
        raise MoelabError(f"{len(devices)} device sets for {cfg.workers} workers; give one each")
    if out.exists() and not out.is_dir():
        raise MoelabError(f"--out {out}: exists and is not a folder")
    checked = build_plan(cfg, out, measure=False)  # validates every run config
    for p in checked:  # a name no filesystem folder can have
        size = len(p.name.encode("utf-8"))
        if size > MAX_RUN_NAME_BYTES:
            raise MoelabError(
                f"run name {p.name[:40]}... is {size} bytes, over the {MAX_RUN_NAME_BYTES} a run "
                "folder name may have; use shorter grid keys or values"
            )
    for p in checked:
        _check_same_config(run_dir(out, p.name), p)
        _check_kept(out, p)
    if plan_only:
        plan = build_plan(cfg, out) if cfg.measure_throughput else checked
        echo(format_plan(plan, eval_note(cfg), cfg.workers))
        return plan
    # One study process per folder; its runs, trained by it or its workers, take their
    # own run-folder locks below it.
    with folder_lock(out, "study"):
        created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MoelabError(f"--out {out}: cannot create the folder ({e.strerror})") from None
        try:
            prepare_study_data(cfg, prepared_dir(cfg, out), echo)
        except BaseException:
            if created:  # nothing of this study existed before: leave nothing behind
                shutil.rmtree(out, ignore_errors=True)
            raise
        atomic_write_text(out / "study.yaml", yaml.safe_dump(study_to_dict(cfg), sort_keys=False))
        if command:  # the report quotes the command line that produced it
            atomic_write_text(out / "command.txt", command + "\n")
        if emit is not None:
            plan = final_plan(cfg, out, measure=False)
            emit(plan)
            return plan
        return _run(cfg, out, echo, started, devices or [])


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """The study's thread count for what it computes itself (throughput measurement,
    evaluation); training sets each run config's ``train.threads`` (build_plan)."""
    if n is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def record_study_time(cfg: StudyConfig, out: Path, started: tuple[float, float]) -> None:
    """Append this invocation to ``study_time.json`` (wall time from the command's start, data
    preparation included); ``wall_s`` is the sum over invocations, so a resumed study states its
    total. Written before the report, which quotes it."""
    import datetime as dt
    import json

    f = out / "study_time.json"
    try:
        old = json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}
        invocations = list(old.get("invocations") or [])
    except (OSError, ValueError, AttributeError):
        invocations = []  # a damaged timing file only loses the earlier invocations' times

    def iso(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")

    wall = time.perf_counter() - started[1]
    invocations.append(
        {
            "started": iso(started[0]),
            "finished": iso(started[0] + wall),
            "wall_s": wall,
            "workers": cfg.workers,
            "threads": cfg.threads,
        }
    )
    total = sum(float(i.get("wall_s") or 0.0) for i in invocations)
    atomic_write_json(f, {"wall_s": total, "invocations": invocations})


def final_plan(cfg: StudyConfig, out: Path, measure: bool | None = None) -> list[PlannedRun]:
    """The plan (the prepared data in every run config), written to ``plan.json``."""
    plan = build_plan(cfg, out, measure=measure)
    atomic_write_json(out / "plan.json", _plan_json(plan))
    return plan


def _run(
    cfg: StudyConfig, out: Path, echo: Echo, started: tuple[float, float], devices: list[list[str]]
) -> list[PlannedRun]:
    plan = final_plan(cfg, out)
    echo(format_plan(plan, eval_note(cfg), cfg.workers))

    key = eval_key(cfg.eval)
    for p in plan:
        _check_same_config(run_dir(out, p.name), p)
    names = [p.name for p in plan]
    earlier = diverged_runs(runs_dir(out), names)
    todo = [  # with their 1-based index in the plan; a diverged run would diverge again
        (i, p)
        for i, p in enumerate(plan, 1)
        if run_state(run_dir(out, p.name), key) is not RunState.FINISHED and p.name not in earlier
    ]
    n = len(plan)
    if len(todo) < n - len(earlier):
        echo(f"{n - len(todo) - len(earlier)} of {n} runs already finished; skipping them")
    if earlier:
        echo(
            f"{len(earlier)} of {n} runs diverged before and are skipped: {', '.join(earlier)} "
            f"(delete RUN/{DIVERGED} to retry one)"
        )
    if todo and (devices or (cfg.workers > 1 and len(todo) > 1)):
        # device sets always go to workers: each sets its own CUDA_VISIBLE_DEVICES
        _run_parallel(cfg, out, todo, n, key, echo, devices)
    else:
        _run_sequential(cfg, out, todo, n, key, echo)
    diverged = diverged_runs(runs_dir(out), names)
    note = f" ({len(diverged)} diverged: {', '.join(diverged)})" if diverged else ""
    echo(f"all {n} runs done{note}; writing the results table, fits and report")
    from moelab.study.analysis.report import build_report

    record_study_time(cfg, out, started)
    build_report(out, echo=echo)
    return plan


def _run_sequential(
    cfg: StudyConfig, out: Path, todo: list[tuple[int, PlannedRun]], n: int, key: str, echo: Echo
) -> None:
    """Train and evaluate ``todo`` one run after another in this process, with an ETA."""
    remaining_est = sum(p.est_seconds for _, p in todo)
    spent_actual = spent_est = 0.0
    # Evaluation does a fixed amount of work per run whatever its training budget, scaling
    # with the model's FLOPs per token: its rate is learned from the evaluations done so far.
    eval_s = eval_flops_per_token = 0.0
    tasks: dict[str, Any] = {}  # each task read once for every run this process evaluates
    for j, (i, planned) in enumerate(todo):
        path = run_dir(out, planned.name)
        state = run_state(path, key)
        ratio = spent_actual / spent_est if spent_est > 0 else 1.0
        eta = fmt_seconds(remaining_est * ratio) + " training"
        if eval_flops_per_token > 0:
            left = sum(p.flops_per_token for _, p in todo[j:]) * eval_s / eval_flops_per_token
            eta += f" + {fmt_seconds(left)} evaluation"
        elif cfg.eval.zero_shot or cfg.eval.few_shot or cfg.eval.finetune or cfg.eval.ppl:
            eta += " + evaluation (estimated once the first run is evaluated)"
        remaining_est -= planned.est_seconds
        train_s = 0.0
        if state in (RunState.NEW, RunState.INTERRUPTED):
            verb = "resuming" if state is RunState.INTERRUPTED else "training"
            echo(
                f"[{i}/{n}] {verb} {planned.name} ({planned.family}, {planned.tokens:,} tokens, "
                f"{planned.train_flops:.2e} FLOPs); study ETA {eta}"
            )
            train_s, diverged = train_run(planned, path, progress=True)
            if diverged:  # recorded; the other runs still get their results
                echo(f"[{i}/{n}] {diverged}")
                continue
            spent_actual += train_s
            spent_est += planned.est_seconds
        echo(f"[{i}/{n}] evaluating {planned.name}")
        eval_s += _evaluate_one(cfg, planned, path, key, train_s, echo, tasks)
        eval_flops_per_token += planned.flops_per_token


_DEVICES: list[str] = []  # this worker's device set (CUDA_VISIBLE_DEVICES), if any


def _init_worker(parent: int, slots, log_level: int | None = None) -> None:
    """Worker initializer: stop handling (study/run/stopping.py), the parent's log lines on
    stderr (a spawned worker starts without its handlers), then a device set of its own from
    ``slots`` before anything touches CUDA."""
    stopping.init_worker(parent)
    if log_level is not None:
        log_to_stderr(log_level)
    if slots is not None:
        _DEVICES[:] = slots.get()
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(_DEVICES)


def train_run(
    planned: PlannedRun, path: Path, nproc: int = 1, progress: bool = False
) -> tuple[float, str | None]:
    """Train one run: in this process, or with ``nproc > 1`` under torchrun (``moelab train``
    on ``nproc`` processes, the run config written to the study's ``configs/`` for it).
    Returns the seconds it took and, when it diverged, the line recording that."""
    start = time.perf_counter()
    try:
        start_upcycled(planned, path)
        if nproc <= 1:
            from moelab.train import train

            train(planned.run_config, path, progress=progress)
        else:
            from moelab.study.run.launch import run_torchrun, train_command

            config = configs_dir(path.parent.parent) / f"{planned.name}.yaml"
            config.parent.mkdir(exist_ok=True)
            atomic_write_text(config, planned.run_config.to_yaml())
            run_torchrun(train_command(config, path, nproc))
    except TrainingDiverged as e:
        return time.perf_counter() - start, record_divergence(path, planned.name, e)
    return time.perf_counter() - start, None


def _train_and_evaluate(
    cfg: StudyConfig, planned: PlannedRun, path: Path, key: str, train: bool
) -> tuple[float, float, list[str], bool]:
    """One run in a worker process: train (unless already trained), evaluate, write its
    study_eval.json. Returns (train seconds, evaluation seconds, the lines it would have
    printed, whether it diverged), so the parent prints each run's lines together."""
    import torch

    torch.set_num_threads(cfg.threads or 1)  # validate() sets a share when workers > 1
    stopping.exit_if_orphaned()
    stopping.start_nothing_new(planned.name)
    lines: list[str] = []
    train_s = 0.0
    if train:
        try:
            train_s, diverged = train_run(planned, path, len(_DEVICES))
        except KeyboardInterrupt as e:  # SIGTERM/SIGINT: the run saved its checkpoint, stopped
            stopping.stopped_by(e)
            stopping.exit_if_orphaned()
            raise
        if diverged:
            return train_s, 0.0, [diverged], True
    stopping.exit_if_orphaned()
    with stopping.Evaluating(planned.name):  # a stop signal (even one after the last step) ends it
        eval_s = _evaluate_one(cfg, planned, path, key, train_s, lines.append)
    return train_s, eval_s, lines, False


def _run_parallel(
    cfg: StudyConfig,
    out: Path,
    todo: list[tuple[int, PlannedRun]],
    n: int,
    key: str,
    echo: Echo,
    devices: list[list[str]],
) -> None:
    """Train and evaluate ``todo`` in ``cfg.workers`` processes, longest runs first (so the
    last to finish is a short one). Each run is computed exactly as in sequence: same config,
    same seed, same thread count, its own process. With ``devices``, worker j owns set j."""
    import concurrent.futures as cf
    import multiprocessing

    # Longest first, a dense run counting its upcycled runs' time (they wait for it)
    waits = {p.name: p.upcycle["dense"] for _, p in todo if p.upcycle}
    chain = {p.name: p.est_seconds for _, p in todo}
    for name, dense in waits.items():
        if dense in chain:
            chain[dense] += chain[name]
    order = sorted(todo, key=lambda ip: -chain[ip[1].name])
    total_est = makespan([p.est_seconds for _, p in todo], cfg.workers)
    where = "; devices " + " | ".join(",".join(d) for d in devices) if devices else ""
    echo(
        f"{len(todo)} runs on {cfg.workers} worker processes ({cfg.threads or 1} thread each"
        f"{where}); estimated training time {fmt_seconds(total_est)} + evaluation"
    )
    start = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    slots = None
    if devices:
        slots = ctx.Queue()
        for d in devices:
            slots.put(d)
    pool = cf.ProcessPoolExecutor(
        max_workers=cfg.workers,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(os.getpid(), slots, stderr_log_level()),
    )
    futures: dict = {}
    # Set here and restored by hand: the stop path restores SIGTERM before it waits for the
    # workers, so a second SIGTERM then ends the study rather than the wait.
    old_sigterm = signal.signal(signal.SIGTERM, stopping.study_sigterm)
    try:

        def submit(i: int, planned: PlannedRun):
            path = run_dir(out, planned.name)
            state = run_state(path, key)
            train = state in (RunState.NEW, RunState.INTERRUPTED)
            verb = {RunState.NEW: "training", RunState.INTERRUPTED: "resuming"}.get(
                state, "evaluating"
            )
            echo(f"[{i}/{n}] queued: {verb} {planned.name} ({planned.family})")
            job = pool.submit(_train_and_evaluate, cfg, planned, path, key, train)
            futures[job] = (i, planned)
            return job

        left = set(chain)  # runs not done yet: an upcycled run waits for its dense run
        held = [ip for ip in order if waits.get(ip[1].name) in left]
        running = {submit(*ip) for ip in order if waits.get(ip[1].name) not in left}
        while running:
            finished, running = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                i, planned = futures[fut]
                train_s, eval_s, lines, diverged = fut.result()  # other errors stop the study
                left.discard(planned.name)
                if diverged:
                    echo(f"[{i}/{n}] " + lines[0])
                    continue
                echo(
                    f"[{i}/{n}] finished {planned.name}: training {fmt_seconds(train_s)}, "
                    f"evaluation {fmt_seconds(eval_s)} ({len(todo) - len(left)}/{len(todo)} done, "
                    f"{fmt_seconds(time.perf_counter() - start)} elapsed)"
                )
                for line in lines:
                    echo(line)
            running |= {submit(*ip) for ip in held if waits[ip[1].name] not in left}
            held = [ip for ip in held if waits[ip[1].name] in left]
    except BaseException as e:
        signal.signal(signal.SIGTERM, old_sigterm)
        procs = list((getattr(pool, "_processes", None) or {}).values())
        if not isinstance(e, KeyboardInterrupt):
            # A failed run: stop now. The workers are killed, not waited for (each would start
            # its next queued run first); every run resumes from its last checkpoint.
            for proc in procs:
                proc.kill()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        # Ctrl-C, SIGTERM, or a worker that was signalled: every worker saves its checkpoint
        # and starts nothing new (study/run/stopping.py); every run resumes from there.
        pool.shutdown(wait=False, cancel_futures=True)
        stopping.stop_workers(procs, grace_seconds() + 10)
        for fut, (i, _) in futures.items():
            err = fut.exception() if fut.done() and not fut.cancelled() else None
            if isinstance(err, KeyboardInterrupt) and "not started" not in str(err):
                echo(f"[{i}/{n}] {err}")
        signum = getattr(e, "signum", signal.SIGINT)
        raise TrainingStopped(f"study stopped by {signal.Signals(signum).name}", signum) from None
    signal.signal(signal.SIGTERM, old_sigterm)
    pool.shutdown(wait=True)


def _evaluate_one(
    cfg: StudyConfig,
    planned: PlannedRun,
    path: Path,
    key: str,
    train_s: float,
    echo: Echo,
    tasks: dict[str, Any] | None = None,
) -> float:
    """Evaluate one trained run, write its ``study_eval.json``; return the seconds it took.
    ``tasks``: the loaded tasks to reuse (study/run/evaluate.py)."""
    start = time.perf_counter()
    with _torch_threads(cfg.threads):
        result = evaluate_run(path, cfg, echo, tasks)
    prior = float((read_study_eval(path) or {}).get("train_wall_s") or 0.0)
    result.update(
        eval_key=key,
        run=planned.name,
        family=planned.family,
        preset=planned.preset,
        values=planned.spec.values,
        train_wall_s=train_s if train_s > 0 else prior or None,
        eval_wall_s=time.perf_counter() - start,
    )
    atomic_write_json(path / STUDY_EVAL, result)
    return result["eval_wall_s"]
