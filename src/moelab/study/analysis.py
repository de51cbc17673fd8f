"""From the results table to fits and speedup factors, using :mod:`moelab.study.fit`.

Everything here reads the table rows (and the table's metadata for chance levels), so every
number the report states can be traced back to ``results.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moelab.errors import MoelabError
from moelab.study.fit import (
    MODES,
    EvalPoint,
    MonotoneFit,
    PowerLawFit,
    SpeedupPoint,
    fit_monotone,
    fit_power_law,
    mean_chance_interval,
    speedup_curve,
)

ZERO_SHOT = "zero_shot_mean"


@dataclass
class MetricAnalysis:
    """One quality metric (a loss column, or the mean zero-shot accuracy) across families."""

    metric: str
    label: str
    higher_is_better: bool
    points: dict[str, list[EvalPoint]]  # family -> every point
    fits: dict[str, PowerLawFit | MonotoneFit] = field(default_factory=dict)
    fit_errors: dict[str, str] = field(default_factory=dict)
    # moe family -> speedup at each of the MoE's measured frontier points
    speedups: dict[str, list[SpeedupPoint]] = field(default_factory=dict)
    chance: tuple[float, float] | None = None


@dataclass
class Analysis:
    families: list[str]
    dense_family: str | None
    partner: dict[str, str]  # moe family -> the dense family it is compared with
    metrics: dict[str, MetricAnalysis]  # by metric column name
    in_domains: list[str]
    out_domains: list[str]
    min_run_fraction: float = 0.0
    mode: str = "envelope"  # the loss fits' point selection (fit.MODES)


def _is_dense(family: str) -> bool:
    return "dense" in family.split("-")


def pair_families(families: list[str]) -> tuple[str | None, dict[str, str]]:
    """Each MoE family is compared with the dense family of the same architecture prefix
    (``dense`` for ``moe8-top2``, ``modern-dense`` for ``modern-moe8-top2``)."""
    dense = [f for f in families if _is_dense(f)]
    partner: dict[str, str] = {}
    for fam in families:
        if fam in dense:
            continue
        prefix = fam.split("moe")[0]
        match = [d for d in dense if d.startswith(prefix + "dense")] or dense
        if match:
            partner[fam] = match[0]
    return (dense[0] if dense else None), partner


def _points(rows: list[dict[str, Any]], column: str, final_only: bool) -> dict[str, list]:
    out: dict[str, list[EvalPoint]] = {}
    for r in rows:
        v = r.get(column)
        if v is None or (final_only and not r.get("final")):
            continue
        c = r.get("train_flops")
        if not c or c <= 0:
            continue
        annealed = bool(r.get("annealed"))
        out.setdefault(r["family"], []).append(EvalPoint(r["run"], float(c), float(v), annealed))
    return out


def moe_frontier_mode(mode: str) -> str:
    """The selection the MoE side of a speedup uses for a dense fit on ``mode``: the same kind of
    point (annealed points for ``annealed``, final points for ``final``), as a monotone frontier;
    ``envelope`` for ``envelope`` and ``all`` (a measured frontier is a lower envelope)."""
    return mode if mode in ("annealed", "final") else "envelope"


def analyse_loss(
    rows: list[dict[str, Any]],
    column: str,
    label: str,
    partner: dict[str, str],
    *,
    mode: str,
    bootstrap: int,
    min_run_fraction: float,
) -> MetricAnalysis:
    ma = MetricAnalysis(column, label, False, _points(rows, column, final_only=False))
    for fam, pts in ma.points.items():
        try:
            ma.fits[fam] = fit_power_law(
                pts, mode=mode, n_bootstrap=bootstrap, min_run_fraction=min_run_fraction
            )
        except MoelabError as e:
            ma.fit_errors[fam] = str(e)
    for moe, dense in partner.items():
        dense_fit = ma.fits.get(dense)
        if dense_fit is None or moe not in ma.points:
            continue
        try:
            frontier = fit_monotone(
                ma.points[moe],
                higher_is_better=False,
                mode=moe_frontier_mode(mode),
                min_run_fraction=min_run_fraction,
            )
        except MoelabError as e:
            ma.fit_errors.setdefault(moe, str(e))
            continue
        ma.speedups[moe] = speedup_curve(dense_fit, frontier)
    return ma


def analyse_zero_shot(
    rows: list[dict[str, Any]], meta: dict[str, Any], partner: dict[str, str]
) -> MetricAnalysis | None:
    """Mean zero-shot accuracy of each run's final checkpoint: a monotone fit in log compute per
    family (a power law does not suit a bounded score), and no speedup inside the chance band."""
    pts = _points(rows, ZERO_SHOT, final_only=True)
    if not pts:
        return None
    ma = MetricAnalysis(ZERO_SHOT, "mean zero-shot accuracy", True, pts)
    tasks = meta.get("zero_shot_tasks") or []
    info = meta.get("tasks", {})
    chances = [info[t]["chance"] for t in tasks if t in info]
    items = [info[t]["n_items"] for t in tasks if t in info]
    if chances and len(chances) == len(tasks):
        ma.chance = mean_chance_interval(chances, items)
    for fam, fpts in pts.items():
        ma.fits[fam] = fit_monotone(fpts, higher_is_better=True, mode="all")
    for moe, dense in partner.items():
        if dense in ma.fits and moe in ma.fits:
            ma.speedups[moe] = speedup_curve(ma.fits[dense], ma.fits[moe], chance=ma.chance)
    return ma


def analyse(
    rows: list[dict[str, Any]],
    meta: dict[str, Any],
    *,
    mode: str = "envelope",
    bootstrap: int = 200,
    min_run_fraction: float = 0.1,
) -> Analysis:
    if mode not in MODES:
        raise MoelabError(f"fit.frontier: {mode!r} is unknown; use one of {', '.join(MODES)}")
    families = list(dict.fromkeys(r["family"] for r in rows))
    dense, partner = pair_families(families)
    in_domains = list(meta.get("in_domains", []))
    out_domains = list(meta.get("out_domains", []))
    metrics: dict[str, MetricAnalysis] = {}
    loss_columns = [("loss_in_domain", "in-domain validation loss")]
    if out_domains:
        loss_columns.append(("loss_out_of_domain", "out-of-domain validation loss (mean)"))
    loss_columns += [(f"loss/{d}", f"validation loss: {d}") for d in in_domains + out_domains]
    for column, label in loss_columns:
        metrics[column] = analyse_loss(
            rows,
            column,
            label,
            partner,
            mode=mode,
            bootstrap=bootstrap,
            min_run_fraction=min_run_fraction,
        )
    zs = analyse_zero_shot(rows, meta, partner)
    if zs is not None:
        metrics[ZERO_SHOT] = zs
    return Analysis(
        families, dense, partner, metrics, in_domains, out_domains, min_run_fraction, mode
    )


def headline(points: list[SpeedupPoint]) -> SpeedupPoint | None:
    """The speedup quoted per domain: at the best quality the MoE reached where the comparison is
    inside the measured dense range; failing that, the last point (marked extrapolated)."""
    valid = [p for p in points if p.speedup is not None and not p.extrapolated]
    if valid:
        return valid[-1]
    with_value = [p for p in points if p.speedup is not None]
    return with_value[-1] if with_value else None


def fits_json(an: Analysis) -> dict[str, Any]:
    """Fits and speedups as plain data (``fits.json``)."""
    out: dict[str, Any] = {
        "dense_family": an.dense_family,
        "partner": an.partner,
        "frontier": an.mode,
        "moe_frontier": moe_frontier_mode(an.mode),
        "min_run_fraction": an.min_run_fraction,
        "metrics": {},
    }
    for name, ma in an.metrics.items():
        entry: dict[str, Any] = {
            "label": ma.label,
            "fits": {},
            "fit_errors": ma.fit_errors,
            "speedups": {},
            "chance_interval": ma.chance,
        }
        for fam, fit in ma.fits.items():
            if isinstance(fit, PowerLawFit):
                entry["fits"][fam] = {
                    "kind": "power_law",
                    "E": fit.E,
                    "A": fit.A,
                    "alpha": fit.alpha,
                    "intervals": fit.intervals,
                    "n_bootstrap": fit.n_bootstrap,
                    "rms_residual": fit.rms_residual,
                    "n_points": len(fit.points),
                    "n_runs": fit.n_runs,
                    "compute_range": fit.compute_range,
                    "mode": fit.mode,
                    "points": [[p.run, p.compute, p.value] for p in fit.points],
                    "residuals": fit.residuals,
                }
            else:
                entry["fits"][fam] = {
                    "kind": "monotone",
                    "knots_compute": fit.knots_compute,
                    "knots_value": fit.knots_value,
                    "residuals": fit.residuals,
                    "compute_range": fit.compute_range,
                }
        for fam, pts in ma.speedups.items():
            entry["speedups"][fam] = [
                {
                    "quality": p.quality,
                    "c_dense": p.c_dense,
                    "c_moe": p.c_moe,
                    "speedup": p.speedup,
                    "extrapolated": p.extrapolated,
                    "note": p.note,
                }
                for p in pts
            ]
        out["metrics"][name] = entry
    return out
