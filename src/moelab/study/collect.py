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
from moelab.study.layout import STUDY_EVAL, read_study_eval, runs_dir
from moelab.study.results import RunRecord


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
        points.append(
            {
                "step": int(row["step"]),
                "tokens": int(row["tokens"]),
                "train_flops": float(row["flops"]),
                "val": {d: _float(v) for d, v in val.items()},
            }
        )
    points.sort(key=lambda p: p["step"])
    # A resumed run may log the same step twice; keep the last.
    dedup: dict[int, dict[str, Any]] = {p["step"]: p for p in points}
    return [dedup[s] for s in sorted(dedup)]


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


def read_record(path: Path) -> RunRecord | None:
    """A finished and evaluated run as a record; None while it is not finished."""
    from moelab.train.config import load_run_config
    from moelab.train.metrics import read_metrics

    ev = read_study_eval(path)
    if not (path / "done.json").is_file() or ev is None:
        return None
    cfg = load_run_config(path / "config.yaml", check_data=False)
    points = validation_points(read_metrics(path))
    if not points:
        raise MoelabError(f"{path}: metrics.jsonl has no validation points; rerun the study")
    counts = count_params(cfg.model)
    return RunRecord(
        name=ev["run"],
        family=ev["family"],
        preset=ev["preset"],
        seed=cfg.train.seed,
        values=ev.get("values", {}),
        params_total=counts.total,
        params_active=counts.active,
        params_active_non_embedding=counts.active_non_embedding,
        in_domains=list(ev["in_domains"]),
        out_domains=list(ev["out_domains"]),
        points=points,
        zero_shot=dict(ev.get("zero_shot", {})),
        few_shot=dict(ev.get("few_shot", {})),
        finetune=dict(ev.get("finetune", {})),
        eval_loss=dict(ev.get("eval_loss", {})),
        train_wall_s=_train_wall(path, ev),
        eval_wall_s=ev.get("eval_wall_s"),
    )


def _train_wall(path: Path, ev: dict[str, Any]) -> float | None:
    """Training wall time: the trainer's own figure in done.json when it has one (it spans
    resumes), else what the study timed."""
    try:
        done = json.loads((path / "done.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        done = {}
    for key in ("wall_s", "train_wall_s", "wall_seconds", "elapsed_s"):
        if _float(done.get(key)) is not None:
            return float(done[key])
    return _float(ev.get("train_wall_s"))


def read_records(out_dir: Path, order: list[str] | None = None) -> list[RunRecord]:
    """Every finished run under DIR/runs, in plan order when the plan is known."""
    root = runs_dir(out_dir)
    if not root.is_dir():
        raise MoelabError(f"{out_dir}: no runs/ folder; is this a study folder (moelab study)?")
    names = sorted(p.name for p in root.iterdir() if (p / STUDY_EVAL).is_file())
    if order:
        rank = {n: i for i, n in enumerate(order)}
        names.sort(key=lambda n: (rank.get(n, len(rank)), n))
    records = [r for r in (read_record(root / n) for n in names) if r is not None]
    return records
