"""The results table: one row per run and evaluation point, written as CSV and JSON.

Each run contributes one row per validation point the trainer logged (log-spaced steps, with the
tokens and training FLOPs spent so far and the validation loss per domain); the last row of a run
(``final`` true) also carries the zero/few-shot accuracies, fine-tuning accuracies, the final
perplexity evaluation and the wall time. The fits read the table, the report prints from it: no
number in the report comes from anywhere else.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moelab.io import atomic_write_json, atomic_write_text

FIXED_COLUMNS = [
    "run",
    "family",
    "preset",
    "seed",
    "step",
    "final",
    "tokens",
    "train_flops",
    "train_flops_spent",
    "annealed",
    "branch",
    "fork_step",
    "params_total",
    "params_active",
    "params_active_non_embedding",
    "tokens_per_param",
    "loss_in_domain",
    "loss_out_of_domain",
    "zero_shot_mean",
    "zero_shot_score_mean",
    "few_shot_mean",
    "train_wall_s",
    "eval_wall_s",
]


@dataclass
class RunRecord:
    """What the study knows about one finished run, gathered from its run directory."""

    name: str
    family: str
    preset: str
    seed: int | None
    values: dict[str, Any]  # the grid values that made this run
    params_total: int
    params_active: int
    params_active_non_embedding: int
    in_domains: list[str]
    out_domains: list[str]
    # validation points: {"step", "tokens", "train_flops", "val": {domain: loss}}
    points: list[dict[str, Any]]
    zero_shot: dict[str, float] = field(default_factory=dict)
    # per zero-shot task: {"accuracy_ci95", "score", "score_ci95", "groups": {group: {...}}}
    zero_shot_detail: dict[str, dict[str, Any]] = field(default_factory=dict)
    few_shot: dict[str, float] = field(default_factory=dict)
    finetune: dict[str, float] = field(default_factory=dict)
    eval_loss: dict[str, float] = field(default_factory=dict)  # final perplexity eval, nats/token
    train_wall_s: float | None = None
    eval_wall_s: float | None = None


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def rows_for_run(rec: RunRecord) -> list[dict[str, Any]]:
    rows = []
    # The final point is the main run's last validation (a branch may end later in steps only
    # if the schedule was cut short; it is never the run's final model).
    main = [i for i, p in enumerate(rec.points) if not p.get("branch")]
    last = main[-1] if main else len(rec.points) - 1
    scores = {t: d["score"] for t, d in rec.zero_shot_detail.items() if d.get("score") is not None}
    for i, p in enumerate(rec.points):
        final = i == last
        val = p.get("val", {})
        row: dict[str, Any] = {
            "run": rec.name,
            "family": rec.family,
            "preset": rec.preset,
            "seed": rec.seed,
            "step": p["step"],
            "final": final,
            "tokens": p["tokens"],
            "train_flops": p["train_flops"],
            "train_flops_spent": p.get("train_flops_spent", p["train_flops"]),
            "annealed": bool(p.get("annealed", False)),
            "branch": bool(p.get("branch", False)),
            "fork_step": p.get("fork_step"),
            "params_total": rec.params_total,
            "params_active": rec.params_active,
            "params_active_non_embedding": rec.params_active_non_embedding,
            "tokens_per_param": p["tokens"] / max(1, rec.params_active),
            "loss_in_domain": _mean([val.get(d) for d in rec.in_domains]),
            "loss_out_of_domain": _mean([val.get(d) for d in rec.out_domains]),
            "zero_shot_mean": _mean(list(rec.zero_shot.values())) if final else None,
            "zero_shot_score_mean": _mean(list(scores.values())) if final and scores else None,
            "few_shot_mean": _mean(list(rec.few_shot.values())) if final else None,
            "train_wall_s": rec.train_wall_s if final else None,
            "eval_wall_s": rec.eval_wall_s if final else None,
        }
        for key, value in rec.values.items():
            row[f"grid.{key}"] = value if not isinstance(value, dict) else value.get("name")
        for d in rec.in_domains + rec.out_domains:
            row[f"loss/{d}"] = val.get(d)
        if final:
            for task, acc in rec.zero_shot.items():
                row[f"zero_shot/{task}"] = acc
                _zero_shot_detail(row, task, rec.zero_shot_detail.get(task) or {})
            for task, acc in rec.few_shot.items():
                row[f"few_shot/{task}"] = acc
            for task, acc in rec.finetune.items():
                row[f"finetune/{task}"] = acc
            for d, loss in rec.eval_loss.items():
                row[f"eval_loss/{d}"] = loss
        rows.append(row)
    return rows


def _zero_shot_detail(row: dict[str, Any], task: str, detail: dict[str, Any]) -> None:
    """Interval and continuous score of one zero-shot task, and its per-field breakdown."""

    def put(prefix: str, name: str, value: Any, ci: Any) -> None:
        row[f"{prefix}/{name}"] = value
        lo, hi = ci if isinstance(ci, list | tuple) and len(ci) == 2 else (None, None)
        row[f"{prefix}_lo/{name}"], row[f"{prefix}_hi/{name}"] = lo, hi

    put("zero_shot", task, row[f"zero_shot/{task}"], detail.get("accuracy_ci95"))
    if detail.get("score") is not None:
        put("zero_shot_score", task, detail["score"], detail.get("score_ci95"))
    for group, g in (detail.get("groups") or {}).items():
        if not group.startswith("field:"):
            continue  # paradigms stay in the run's study_eval.json
        put("zero_shot", f"{task}:{group}", g.get("accuracy"), g.get("accuracy_ci95"))
        if g.get("score") is not None:
            put("zero_shot_score", f"{task}:{group}", g["score"], g.get("score_ci95"))


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    """Fixed columns first, then grid values, per-domain losses, accuracies, in first-seen order."""
    extra: list[str] = []
    for row in rows:
        for k in row:
            if k not in FIXED_COLUMNS and k not in extra:
                extra.append(k)
    order = (
        "grid.",
        "loss/",
        "eval_loss/",
        "zero_shot/",
        "zero_shot_lo/",
        "zero_shot_hi/",
        "zero_shot_score",
        "few_shot/",
        "finetune/",
    )
    extra.sort(key=lambda k: next((i for i, p in enumerate(order) if k.startswith(p)), len(order)))
    return FIXED_COLUMNS + extra


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_results(out_dir: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Write ``results.csv`` and ``results.json`` (rows plus the metadata the report states:
    domains, tasks, item limit, seeds, chance levels)."""
    cols = columns_of(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in cols])
    atomic_write_text(out_dir / "results.csv", buf.getvalue())
    atomic_write_json(out_dir / "results.json", {"meta": meta, "columns": cols, "rows": rows})


def read_results(out_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    data = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    return data["rows"], data["meta"]
