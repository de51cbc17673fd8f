"""The results table: a :class:`CurvePoint` per run and validation point, the run's
:class:`FinalEval` on its final one, written as CSV and JSON; the string column names exist only
here, where the table meets its files. Columns: docs/study.md#the-results-table
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moelab.io import atomic_write_json, atomic_write_text


@dataclass
class Accuracy:
    """A zero-shot accuracy (or continuous score) with its 95% interval over items."""

    value: float | None
    lo: float | None = None
    hi: float | None = None


@dataclass
class LoadBalance:
    """An MoE run's routing balance over its last logged training interval: MaxVio (Wang et al.
    2024) mean over MoE layers and worst layer, dead experts summed (docs/study.md, columns)."""

    max_vio: float
    max_vio_max: float
    dead_experts: int


@dataclass
class FinalEval:
    """A run's evaluation of its final checkpoint. ``zero_shot``/``zero_shot_score``: by task
    label, each task followed by its per-field breakdown (``blimp:field:syntax``); the means
    are over the study's zero-shot (few-shot) tasks only."""

    zero_shot: dict[str, Accuracy] = field(default_factory=dict)
    zero_shot_score: dict[str, Accuracy] = field(default_factory=dict)
    few_shot: dict[str, float | None] = field(default_factory=dict)
    finetune: dict[str, float | None] = field(default_factory=dict)
    eval_loss: dict[str, float | None] = field(default_factory=dict)  # nats/token, whole split
    zero_shot_mean: float | None = None
    zero_shot_score_mean: float | None = None
    few_shot_mean: float | None = None
    train_wall_s: float | None = None
    eval_wall_s: float | None = None
    load: LoadBalance | None = None  # MoE runs with telemetry only


@dataclass
class CurvePoint:
    """A run's point on its training curve. ``evaluation``: set on the run's final point."""

    run: str
    family: str
    preset: str | None
    seed: int | None
    step: int
    tokens: int
    train_flops: float
    train_flops_spent: float | None
    annealed: bool
    branch: bool
    fork_step: int | None
    params_total: int
    params_active: int
    params_active_non_embedding: int | None
    loss_in_domain: float | None
    loss_out_of_domain: float | None
    loss: dict[str, float | None] = field(default_factory=dict)  # validation loss per domain
    grid: dict[str, Any] = field(default_factory=dict)  # the grid values that made the run
    evaluation: FinalEval | None = None
    # of train_flops, the dense run's to the checkpoint an upcycled run started from (no column)
    upcycled_flops: float = 0.0

    @property
    def final(self) -> bool:
        return self.evaluation is not None

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / max(1, self.params_active)


def to_row(p: CurvePoint) -> dict[str, Any]:
    """The point as a table row (the column names of docs/study.md)."""
    ev = p.evaluation
    row: dict[str, Any] = {name: getattr(p, name) for name in POINT_COLUMNS}
    for name in FINAL_NUMBERS:
        row[name] = getattr(ev, name) if ev else None
    load = ev.load if ev else None
    for name in LOAD_NUMBERS:
        row[name] = getattr(load, name) if load else None
    row.update({f"grid.{k}": v for k, v in p.grid.items()})
    row.update({f"loss/{d}": v for d, v in p.loss.items()})
    if ev is None:
        return row
    for task, acc in ev.zero_shot.items():
        for prefix, a in (("zero_shot", acc), ("zero_shot_score", ev.zero_shot_score.get(task))):
            if a is not None:
                row[f"{prefix}/{task}"] = a.value
                row[f"{prefix}_lo/{task}"], row[f"{prefix}_hi/{task}"] = a.lo, a.hi
    for prefix, values in (("few_shot", ev.few_shot), ("finetune", ev.finetune)):
        row.update({f"{prefix}/{t}": v for t, v in values.items()})
    row.update({f"eval_loss/{d}": v for d, v in ev.eval_loss.items()})
    return row


POINT_COLUMNS = (
    "run family preset seed step final tokens train_flops train_flops_spent annealed branch "
    "fork_step params_total params_active params_active_non_embedding tokens_per_param "
    "loss_in_domain loss_out_of_domain"
).split()
FINAL_NUMBERS = (
    "zero_shot_mean",
    "zero_shot_score_mean",
    "few_shot_mean",
    "train_wall_s",
    "eval_wall_s",
)
LOAD_NUMBERS = ("max_vio", "max_vio_max", "dead_experts")


def from_row(row: dict[str, Any]) -> CurvePoint:
    """A table row (results.json) as a point; columns a row lacks are None."""

    def under(prefix: str) -> dict[str, Any]:
        return {k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix)}

    def accuracies(prefix: str) -> dict[str, Accuracy]:
        lo, hi = under(f"{prefix}_lo/"), under(f"{prefix}_hi/")
        return {t: Accuracy(v, lo.get(t), hi.get(t)) for t, v in under(f"{prefix}/").items()}

    ev = None
    if row.get("final"):
        ev = FinalEval(
            accuracies("zero_shot"),
            accuracies("zero_shot_score"),
            under("few_shot/"),
            under("finetune/"),
            under("eval_loss/"),
            **{name: row.get(name) for name in FINAL_NUMBERS},
        )
        if row.get("max_vio") is not None:
            ev.load = LoadBalance(**{name: row[name] for name in LOAD_NUMBERS})
    point = {k: row.get(k) for k in POINT_COLUMNS if k not in ("final", "tokens_per_param")}
    point.update({k: row[k] for k in ("run", "family", "step", "tokens", "train_flops")})
    point.update(annealed=bool(row.get("annealed")), branch=bool(row.get("branch")))
    point.update(params_total=row.get("params_total", 0), params_active=row.get("params_active", 0))
    return CurvePoint(**point, loss=under("loss/"), grid=under("grid."), evaluation=ev)


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    """The rows' columns in first-seen order, grouped: fixed columns, grid values, per-domain
    losses, accuracies."""
    seen = list(dict.fromkeys(k for row in rows for k in row))
    fixed = seen[: seen.index(LOAD_NUMBERS[-1]) + 1]
    order = "grid. loss/ eval_loss/ zero_shot/ zero_shot_lo/ zero_shot_hi/ zero_shot_score"
    order = order.split() + ["few_shot/", "finetune/"]
    extra = sorted(
        seen[len(fixed) :],
        key=lambda k: next((i for i, p in enumerate(order) if k.startswith(p)), len(order)),
    )
    return fixed + extra


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_results(out_dir: Path, points: list[CurvePoint], meta: dict[str, Any]) -> None:
    """Write ``results.csv`` and ``results.json`` (rows plus the metadata the report states:
    domains, tasks, item limit, seeds, chance levels)."""
    rows = [to_row(p) for p in points]
    cols = columns_of(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in cols])
    atomic_write_text(out_dir / "results.csv", buf.getvalue())
    atomic_write_json(out_dir / "results.json", {"meta": meta, "columns": cols, "rows": rows})


def read_results(out_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The table's rows (plain column-keyed dicts, as in results.json; :func:`from_row` makes
    points of them) and its metadata."""
    data = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    return data["rows"], data["meta"]
