"""Read finished runs back into the table's points from their files alone (config.yaml,
metrics.jsonl, done.json, study_eval.json), so ``moelab report DIR`` needs no data or model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from moelab.errors import MoelabError
from moelab.flops import count_params
from moelab.study.plan.layout import STUDY_EVAL, runs_dir
from moelab.study.results.diverged import read_divergence
from moelab.study.results.table import Accuracy, CurvePoint, FinalEval, LoadBalance
from moelab.train.config import load_run_config
from moelab.train.metrics import METRICS
from moelab.train.rundir import read_done


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def validation_points(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl that carry validation losses: a :class:`CurvePoint`'s step,
    tokens, FLOPs, annealing and branch fields, and ``val``, the loss per domain."""
    points = []
    for row in metrics:
        val = row.get("val_loss")
        if not isinstance(val, dict) or not val:
            continue
        branch = bool(row.get("branch"))
        flops = float(row["flops"])
        points.append(
            {
                "step": int(row["step"]),
                "tokens": int(row["tokens"]),
                "train_flops": flops,
                "train_flops_spent": _float(row.get("flops_spent")) or flops,
                # Runs trained before annealing was recorded: no point is known to be annealed.
                "annealed": bool(row.get("annealed", False)),
                "branch": branch,
                "fork_step": int(row["fork_step"]) if branch else None,
                "val": {d: _float(v) for d, v in val.items()},
            }
        )
    # A resumed run may log the same step twice; keep the last. A cooldown branch may end at
    # the step of a main-run validation: both are kept, the main run's point last.
    dedup: dict[tuple[int, bool], dict[str, Any]] = {(p["step"], p["branch"]): p for p in points}
    return [dedup[k] for k in sorted(dedup, key=lambda k: (k[0], not k[1]))]


def expert_load(metrics: list[dict[str, Any]]) -> tuple[list[int], np.ndarray] | None:
    """(steps, tokens routed per expert as (layers, steps, experts)) from the MoE telemetry of
    every logged row, or None for a dense run."""
    steps: list[int] = []
    loads: list[list[list[int]]] = []
    for row in metrics:
        moe = row.get("moe")
        if not moe:
            continue
        per_layer = [layer.get("tokens_per_expert") for layer in moe]
        if any(p is None for p in per_layer):
            continue
        steps.append(int(row["step"]))
        loads.append(per_layer)
    if not steps:
        return None
    arr_SLE = np.asarray(loads, dtype=float)
    return steps, arr_SLE.transpose(1, 0, 2)


def read_run(path: Path, key: str | None = None) -> tuple[list[CurvePoint], dict[str, Any]]:
    """A finished and evaluated run's points on the table, and its study_eval.json. Anything
    missing or damaged is refused with one line naming the file and the fix: a report is never
    built from part of a run. ``key``: the study's evaluation key the run must match."""
    rerun = f"moelab study CONFIG --out {path.parent.parent}"
    if not (path / "done.json").is_file():
        what = "has no run folder" if not path.is_dir() else "is not finished (no done.json)"
        raise MoelabError(f"{path}: this planned run {what}; rerun `{rerun}` to finish it")
    ev = read_finished_eval(path, rerun, key)
    retrain = f"delete {path} and rerun `{rerun}` to train it again"
    try:
        cfg = load_run_config(path / "config.yaml", check_data=False)
    except MoelabError as e:
        msg = str(e) if "config.yaml" in str(e) else f"{path / 'config.yaml'}: {e}"
        raise MoelabError(f"{msg}; {retrain}") from None
    metrics_file = path / METRICS
    metrics = read_finished_metrics(path, retrain)
    try:
        points = validation_points(metrics)
    except (KeyError, TypeError, ValueError) as e:
        raise MoelabError(
            f"{metrics_file}: a validation row is malformed ({type(e).__name__}: {e}); {retrain}"
        ) from None
    if not points:
        raise MoelabError(f"{metrics_file}: no validation points in a finished run; {retrain}")
    try:
        out = curve(points, ev, cfg, path)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        fix = f"delete it and rerun `{rerun}` to evaluate the run again"
        raise MoelabError(
            f"{path / STUDY_EVAL}: not a study evaluation ({type(e).__name__}: {e}); {fix}"
        ) from None
    next(p for p in out if p.final).evaluation.load = final_load(metrics)
    return out, ev


def final_load(metrics: list[dict[str, Any]]) -> LoadBalance | None:
    """The load balance of the main run's last logged MoE telemetry (None without), computed
    as the trainer does for runs trained before it wrote ``max_vio`` and ``dead_experts``."""
    from moelab.train.telemetry import with_load_balance

    for row in reversed(metrics):
        moe = row.get("moe")
        if not isinstance(moe, list) or not moe or row.get("branch"):
            continue
        layers = []
        for layer in (x for x in moe if isinstance(x, dict)):
            if "max_vio" not in layer and layer.get("tokens_per_expert"):
                layer = with_load_balance(layer)
            if _float(layer.get("max_vio")) is not None:
                layers.append(layer)
        if not layers:
            continue
        vio = [float(layer["max_vio"]) for layer in layers]
        dead = sum(int(layer.get("dead_experts") or 0) for layer in layers)
        return LoadBalance(sum(vio) / len(vio), max(vio), dead)
    return None


def curve(
    points: list[dict[str, Any]], ev: dict[str, Any], cfg: Any, path: Path
) -> list[CurvePoint]:
    """The run's table points: its validation points, with its evaluation (``ev``, its
    study_eval.json) on the final one, the main run's last validation (a branch may end later
    in steps only if the schedule was cut short; it is never the run's final model)."""
    counts = count_params(cfg.model)
    in_domains, out_domains = list(ev["in_domains"]), list(ev["out_domains"])
    main = [i for i, p in enumerate(points) if not p["branch"]]
    last = main[-1] if main else len(points) - 1
    # An upcycled run (moelab upcycle) started from a dense checkpoint: its compute includes
    # the dense run's to that checkpoint (docs/upcycle.md), its own metrics count only its own.
    up, seed = cfg.upcycled_from, cfg.train.seed
    prior = float(up.train_flops) if up else 0.0
    dense = path.parent / Path(up.run).name / "config.yaml" if up else None
    if dense and dense.is_file():  # its seed column: its dense run's, the replicate it is of
        seed = load_run_config(dense, check_data=False).train.seed
    out = []
    for i, p in enumerate(points):
        val = p["val"]
        fields = {k: v for k, v in p.items() if k != "val"}  # step, tokens, FLOPs, branch
        fields.update({k: p[k] + prior for k in ("train_flops", "train_flops_spent")})
        out.append(
            CurvePoint(
                run=ev["run"],
                family=ev["family"],
                preset=ev["preset"],
                seed=seed,
                **fields,
                params_total=counts.total,
                params_active=counts.active,
                params_active_non_embedding=counts.active_non_embedding,
                loss_in_domain=_mean([val.get(d) for d in in_domains]),
                loss_out_of_domain=_mean([val.get(d) for d in out_domains]),
                loss={d: val.get(d) for d in in_domains + out_domains},
                grid={
                    k: v.get("name") if isinstance(v, dict) else v
                    for k, v in (ev.get("values") or {}).items()
                },
                evaluation=final_eval(path, ev) if i == last else None,
                upcycled_flops=prior,
            )
        )
    return out


def final_eval(path: Path, ev: dict[str, Any]) -> FinalEval:
    """The run's final evaluation from its study_eval.json (the means are the study's: set by
    the report, which knows its task lists)."""
    out = FinalEval(
        few_shot=dict(ev.get("few_shot") or {}),
        finetune=dict(ev.get("finetune") or {}),
        eval_loss=dict(ev.get("eval_loss") or {}),
        eval_wall_s=_float(ev.get("eval_wall_s")),
    )
    # The trainer's own figure spans resumes; a run without a (valid) done.json: the study's.
    wall = _float((read_done(path) or {}).get("wall_s"))
    out.train_wall_s = wall if wall is not None else _float(ev.get("train_wall_s"))
    details = ev.get("zero_shot_detail") or {}
    for task, acc in (ev.get("zero_shot") or {}).items():
        detail = details.get(task) or {}
        # per field (paradigms stay in the run's study_eval.json)
        groups = [(f"{task}:{g}", d) for g, d in (detail.get("groups") or {}).items()]
        fields = [(name, d) for name, d in groups if name.startswith(f"{task}:field:")]
        for name, d in [(task, {**detail, "accuracy": acc}), *fields]:
            out.zero_shot[name] = Accuracy(d.get("accuracy"), *_pair(d.get("accuracy_ci95")))
            if d.get("score") is not None:
                out.zero_shot_score[name] = Accuracy(d["score"], *_pair(d.get("score_ci95")))
    return out


def _pair(ci: Any) -> tuple[Any, Any]:
    return tuple(ci) if isinstance(ci, list | tuple) and len(ci) == 2 else (None, None)


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def read_finished_metrics(path: Path, fix: str) -> list[dict[str, Any]]:
    """Every row of a finished run's metrics.jsonl. A torn or damaged line is refused: it is
    legitimate only while a run is training (the trainer drops it when it resumes), so in a
    finished run it means the file was damaged and rows would silently go missing."""
    f = path / METRICS
    try:
        text = f.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MoelabError(f"{f}: missing in a finished run; {fix}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MoelabError(f"{f}: cannot read it ({_reason(e)}); {fix}") from None
    lines = text.splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            torn = i == len(lines) and not text.endswith("\n")
            what = "is cut off (torn last line)" if torn else "is not a JSON object"
            raise MoelabError(f"{f}: line {i} {what} although the run finished; {fix}")
        rows.append(row)
    return rows


def read_finished_eval(path: Path, rerun: str, key: str | None = None) -> dict[str, Any]:
    """A finished run's study_eval.json; a missing, unreadable, stale or foreign one is refused
    (deleting it makes the next `moelab study` evaluate the run again)."""
    f = path / STUDY_EVAL
    fix = f"delete it and rerun `{rerun}` to evaluate the run again"
    if not f.is_file():
        raise MoelabError(
            f"{f}: missing, the run is trained but not evaluated; rerun `{rerun}` to evaluate it"
        )
    try:
        ev = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MoelabError(f"{f}: not valid JSON ({e.msg} at line {e.lineno}); {fix}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MoelabError(f"{f}: cannot read it ({_reason(e)}); {fix}") from None
    if not isinstance(ev, dict) or "run" not in ev:
        raise MoelabError(f"{f}: not a study evaluation (no 'run' field); {fix}")
    if ev["run"] != path.name:
        raise MoelabError(f"{f}: belongs to run {ev['run']!r}, not {path.name!r}; {fix}")
    if key is not None and ev.get("eval_key") != key:
        raise MoelabError(f"{f}: evaluated with other settings than the study's study.yaml; {fix}")
    return ev


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def read_records(
    out_dir: Path, order: list[str] | None = None, *, key: str | None = None
) -> tuple[list[CurvePoint], list[dict[str, Any]]]:
    """The table's points of a study's runs and each run's study_eval.json: every run of
    ``order`` (the plan) finished and evaluated with ``key`` or refused, then finished run
    folders outside the plan (docs/study.md#the-study-folder)."""
    root = runs_dir(out_dir)
    if not root.is_dir():
        raise MoelabError(f"{out_dir}: no runs/ folder; is this a study folder (moelab study)?")
    # A diverged run has no results: it is left out here and listed by diverged_runs.
    planned = [n for n in dict.fromkeys(order or []) if read_divergence(root / n) is None]
    extra = sorted(
        p.name
        for p in root.iterdir()
        if p.name not in set(planned) and (p / "done.json").is_file() and (p / STUDY_EVAL).is_file()
    )
    runs = [read_run(root / n, key) for n in planned] + [read_run(root / n) for n in extra]
    return [p for pts, _ in runs for p in pts], [ev for _, ev in runs]
