"""Read finished runs back from disk into :class:`RunRecord` objects and table rows.

Only files are read (the run's resolved ``config.yaml``, ``metrics.jsonl``, ``done.json`` and the
study's ``study_eval.json``), so ``moelab report DIR`` works without the data or a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from moelab.errors import MoelabError
from moelab.flops import count_params
from moelab.study.diverged import read_divergence
from moelab.study.layout import STUDY_EVAL, runs_dir
from moelab.study.results import RunRecord
from moelab.train.metrics import METRICS


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def validation_points(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl that carry validation losses, as table points."""
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


def read_record(path: Path, *, rerun: str, key: str | None = None) -> RunRecord:
    """A finished and evaluated run as a record. Anything missing or damaged is refused with
    one line naming the file and the fix (``rerun`` is the study command to quote): a report is
    never built from part of a run. ``key``: the study's evaluation key the run must match."""
    from moelab.train.config import load_run_config

    if not (path / "done.json").is_file():
        what = "has no run folder" if not path.is_dir() else "is not finished (no done.json)"
        raise MoelabError(f"{path}: this planned run {what}; rerun `{rerun}` to finish it")
    ev = read_finished_eval(path, rerun=rerun, key=key)
    retrain = f"delete {path} and rerun `{rerun}` to train it again"
    try:
        cfg = load_run_config(path / "config.yaml", check_data=False)
    except MoelabError as e:
        msg = str(e) if "config.yaml" in str(e) else f"{path / 'config.yaml'}: {e}"
        raise MoelabError(f"{msg}; {retrain}") from None
    metrics_file = path / METRICS
    try:
        points = validation_points(read_finished_metrics(path, retrain))
    except (KeyError, TypeError, ValueError) as e:
        raise MoelabError(
            f"{metrics_file}: a validation row is malformed ({type(e).__name__}: {e}); {retrain}"
        ) from None
    if not points:
        raise MoelabError(f"{metrics_file}: no validation points in a finished run; {retrain}")
    counts = count_params(cfg.model)
    return RunRecord(
        name=ev["run"],
        family=ev["family"],
        preset=ev["preset"],
        seed=cfg.train.seed,
        values=ev.get("values") or {},
        params_total=counts.total,
        params_active=counts.active,
        params_active_non_embedding=counts.active_non_embedding,
        in_domains=list(ev["in_domains"]),
        out_domains=list(ev["out_domains"]),
        points=points,
        zero_shot=dict(ev.get("zero_shot") or {}),
        zero_shot_detail={
            k: v for k, v in (ev.get("zero_shot_detail") or {}).items() if isinstance(v, dict)
        },
        few_shot=dict(ev.get("few_shot") or {}),
        finetune=dict(ev.get("finetune") or {}),
        eval_loss=dict(ev.get("eval_loss") or {}),
        train_wall_s=_train_wall(path, ev),
        eval_wall_s=_float(ev.get("eval_wall_s")),
    )


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


# study_eval.json fields the table needs, and the types they must have
_EVAL_REQUIRED: dict[str, tuple[type, ...]] = {
    "run": (str,),
    "family": (str,),
    "preset": (str, type(None)),
    "in_domains": (list,),
    "out_domains": (list,),
}
_EVAL_SCORES = ("zero_shot", "few_shot", "finetune", "eval_loss")


def read_finished_eval(path: Path, *, rerun: str, key: str | None = None) -> dict[str, Any]:
    """A finished run's study_eval.json, checked field by field; a missing, damaged or stale
    file is refused (deleting it makes the next `moelab study` evaluate the run again)."""
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
    if not isinstance(ev, dict):
        raise MoelabError(f"{f}: expected a JSON object; {fix}")
    for name, types in _EVAL_REQUIRED.items():
        if name not in ev:
            raise MoelabError(f"{f}: no {name!r} field; {fix}")
        if not isinstance(ev[name], types):
            raise MoelabError(f"{f}: field {name!r} has the wrong type; {fix}")
    if ev["run"] != path.name:
        raise MoelabError(f"{f}: belongs to run {ev['run']!r}, not {path.name!r}; {fix}")
    for name in _EVAL_SCORES + ("values", "tasks", "zero_shot_detail"):
        if ev.get(name) is not None and not isinstance(ev[name], dict):
            raise MoelabError(f"{f}: field {name!r} must be a mapping; {fix}")
    for name in _EVAL_SCORES:
        for task, value in (ev.get(name) or {}).items():
            if value is not None and _float(value) is None and not isinstance(value, float):
                raise MoelabError(f"{f}: {name}.{task} is not a number ({value!r}); {fix}")
    if key is not None and ev.get("eval_key") != key:
        raise MoelabError(f"{f}: evaluated with other settings than the study's study.yaml; {fix}")
    return ev


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _train_wall(path: Path, ev: dict[str, Any]) -> float | None:
    """Training wall time: the trainer's own figure in done.json when it has one (it spans
    resumes), else what the study timed."""
    try:
        done = json.loads((path / "done.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        done = {}
    if not isinstance(done, dict):  # a hand-edited file: fall back to the study's own timing
        done = {}
    for key in ("wall_s", "train_wall_s", "wall_seconds", "elapsed_s"):
        if _float(done.get(key)) is not None:
            return float(done[key])
    return _float(ev.get("train_wall_s"))


def read_records(
    out_dir: Path,
    order: list[str] | None = None,
    *,
    rerun: str = "moelab study CONFIG --out DIR",
    key: str | None = None,
) -> list[RunRecord]:
    """The runs of a study, every one finished and evaluated. ``order``: the plan's run
    names; each must be finished (else the study is not done and the report refuses) and
    evaluated with ``key``. Run folders outside the plan (an earlier grid in the same --out)
    join the table after them when they are finished and evaluated."""
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
    records = [read_record(root / n, rerun=rerun, key=key) for n in planned]
    records += [read_record(root / n, rerun=rerun) for n in extra]
    return records
