"""From the results table to fits, speedup factors with intervals, labels and measured bounds;
everything is read from the table rows (and its metadata for chance levels), so every number
the report states traces back to ``results.json``. Method: docs/fit.md
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from moelab.errors import MoelabError
from moelab.study.analysis.bootstrap import RunResampler, SeedNoise, percentile_interval
from moelab.study.analysis.bounds import MeasuredBound, bounds_at, measured_bounds
from moelab.study.analysis.fit import (
    EXTRAPOLATED,
    INTERPOLATED,
    MEASURED_BOUND,
    MODES,
    EvalPoint,
    MonotoneFit,
    PowerLawFit,
    SpeedupPoint,
    fit_monotone,
    fit_power_law,
    mean_chance_interval,
    refit_power_law,
    set_intervals,
    speedup_at,
)
from moelab.study.results.table import CurvePoint

ZERO_SHOT = "zero_shot_mean"
ZERO_SHOT_SCORE = "zero_shot_score_mean"
ACCURACY_LABEL = "mean zero-shot accuracy"
SCORE_LABEL = "mean zero-shot continuous score (normalised probability of the correct candidate)"
SEED_KEYS = ("seed", "train.seed")  # grid keys of the trainer's seed


@dataclass(frozen=True)
class Headline:
    """The speedup quoted for one setting and MoE family: docs/fit.md#the-headline. ``bound``:
    ``">="`` or ``"<="`` for a measured bound, the fit's value then in ``fit_speedup``."""

    quality: float
    speedup: float
    label: str
    lo: float | None
    hi: float | None
    c_dense: float | None
    c_moe: float | None
    at_dense_edge: bool = False
    bound: str = ""
    fit_speedup: float | None = None
    fit_lo: float | None = None
    fit_hi: float | None = None
    note: str = ""
    n_resamples: int = 0  # bootstrap resamples that gave a value at this quality

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class MetricAnalysis:
    """One quality metric (a loss column, the mean zero-shot accuracy or score) across
    families. Per MoE family: the speedup curve (each point with interval, label and measured
    bounds), the headline, every measured bound, and how the interval was made or why none."""

    metric: str
    label: str
    higher_is_better: bool
    points: dict[str, list[EvalPoint]]  # family -> every point
    fits: dict[str, PowerLawFit | MonotoneFit] = field(default_factory=dict)
    fit_errors: dict[str, str] = field(default_factory=dict)
    speedups: dict[str, list[SpeedupPoint]] = field(default_factory=dict)
    chance: tuple[float, float] | None = None  # accuracy: no speedup at or below its top
    headlines: dict[str, Headline] = field(default_factory=dict)
    bounds: dict[str, list[MeasuredBound]] = field(default_factory=dict)
    interval: dict[str, str] = field(default_factory=dict)  # scheme, or why no interval
    seed_noise: dict[str, SeedNoise] = field(default_factory=dict)  # the spread intervals used
    n_bootstrap: dict[str, int] = field(default_factory=dict)  # resamples that gave both fits
    dense_edge: dict[str, float] = field(default_factory=dict)  # quality at the dense range's top
    kind: str = "loss"  # "loss", "accuracy" or "score"


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
    bootstrap: int = 0
    seed_spread: list[dict[str, Any]] = field(default_factory=list)


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


def stratum_key(p: CurvePoint) -> str:
    """The configuration a run replicates: its preset and every grid value except the seed.
    Runs with equal keys are seeds of one design point (the bootstrap's strata)."""
    grid = [f"grid.{k}={v}" for k, v in sorted(p.grid.items()) if k not in SEED_KEYS]
    return "|".join([str(p.family), str(p.preset or p.run), *grid])


def strata_of(points: list[CurvePoint]) -> dict[str, str]:
    return {p.run: stratum_key(p) for p in points}


def domain_metric(domain: str) -> str:
    """The metric (fits.json key) of one domain's validation loss."""
    return f"loss/{domain}"


def metric_value(metric: str) -> Callable[[CurvePoint], float | None]:
    """What a metric (a key of fits.json's ``metrics``) reads from a point; the zero-shot means
    are on final points only."""
    if metric.startswith(domain_metric("")):
        domain = metric.split("/", 1)[1]
        return lambda p: p.loss.get(domain)
    if metric in (ZERO_SHOT, ZERO_SHOT_SCORE):
        return lambda p: getattr(p.evaluation, metric) if p.evaluation else None
    return lambda p: getattr(p, metric)


def _points(points: list[CurvePoint], metric: str) -> dict[str, list]:
    value = metric_value(metric)
    out: dict[str, list[EvalPoint]] = {}
    for p in points:
        v = value(p)
        c = p.train_flops
        if v is None or not c or c <= 0 or not math.isfinite(float(v)):
            continue
        out.setdefault(p.family, []).append(EvalPoint(p.run, float(c), float(v), p.annealed))
    return out


def moe_frontier_mode(mode: str) -> str:
    """The MoE frontier's selection for a dense fit on ``mode`` (docs/fit.md#speedup-factor)."""
    return mode if mode in ("annealed", "final") else "envelope"


# ---------------------------------------------------------------------------------------------
# Headline


def headline(
    points: list[SpeedupPoint], *, higher_is_better: bool = False, edge: float | None = None
) -> Headline | None:
    """The speedup quoted for a setting (docs/fit.md#the-headline); ``edge``: the quality at
    the dense range's top edge."""
    valid = [p for p in points if p.speedup is not None and not p.extrapolated]
    pool = valid or [p for p in points if p.speedup is not None]
    if not pool:
        return None
    pick = max if higher_is_better else min
    p = pick(pool, key=lambda q: q.quality)
    at_edge = edge is not None and math.isclose(p.quality, edge, rel_tol=1e-12)
    label = INTERPOLATED if valid else EXTRAPOLATED
    h = Headline(
        p.quality,
        p.speedup,
        label,
        p.lo,
        p.hi,
        p.c_dense,
        p.c_moe,
        at_edge,
        note=p.note,
        n_resamples=p.n_resamples,
    )
    fit_text = f"the fit gave {times_interval(p.speedup, p.lo, p.hi)}"
    if p.contradicted in (">=", "<="):
        lower = p.contradicted == ">="
        return replace(
            h,
            speedup=p.lower_bound if lower else p.upper_bound,
            label=MEASURED_BOUND,
            lo=None,
            hi=None,
            bound=p.contradicted,
            fit_speedup=p.speedup,
            fit_lo=p.lo,
            fit_hi=p.hi,
            note=f"{fit_text}, {'below' if lower else 'above'} what the runs measured",
        )
    return h


def times(v: float | None) -> str:
    """A speedup as the report writes it (``2.00x``; ``-`` for none)."""
    return "-" if v is None else f"{v:.2f}x"


def times_interval(v: float | None, lo: float | None, hi: float | None) -> str:
    """A speedup and its 95% interval where it has one (``2.00x [1.50x, 2.60x]``)."""
    return times(v) + (f" [{times(lo)}, {times(hi)}]" if lo is not None else "")


# ---------------------------------------------------------------------------------------------
# One comparison: an MoE family against its dense partner on one metric


def _levels(moe: MonotoneFit, edge: float | None, hib: bool) -> list[float]:
    """The MoE frontier's measured qualities plus the dense range's top edge, worst first."""
    levels = list(moe.knots_value) + ([edge] if edge is not None else [])
    return sorted(set(levels), key=lambda q: q if hib else -q)


def _dense_compute_at(params: tuple[float, float, float], t: float) -> float | None:
    e, log_a, alpha = params
    if not t > e:
        return None
    return math.exp((log_a - math.log(t - e)) / alpha)


def interval_text(noise: SeedNoise, n_bootstrap: int) -> str:
    """How a comparison's intervals were made (the spread itself: :func:`seed_sd_text`)."""
    return (
        f"95% percentile interval over {n_bootstrap} resamples: every preset's runs shifted "
        f"together by a seed offset of sd / sqrt(its seeds), sd drawn per resample from its "
        f"posterior given the seed-to-seed spread of {noise.runs} replicate runs "
        f"({noise.df} degrees of freedom, pooled over both families), so few replicates widen "
        f"the interval"
    )


def _noise_dict(noise: SeedNoise, units: str) -> dict[str, Any]:
    lo, hi = noise.sd_interval()
    return {
        "sd": noise.sd,
        "sd_lo": lo,
        "sd_hi": hi,
        "df": noise.df,
        "replicate_runs": noise.runs,
        "units": units,
    }


def seed_sd_text(noise: SeedNoise, log_values: bool) -> str:
    """The pooled seed spread with its 95% range: in % of the loss, or in value units."""
    vals = (noise.sd, *noise.sd_interval())
    if log_values:
        return "{:.2%} [{:.2%}, {:.2%}]".format(*vals)
    return "{:.4f} [{:.4f}, {:.4f}]".format(*vals)


def compare(
    ma: MetricAnalysis,
    moe: str,
    dense: str,
    moe_curve: MonotoneFit,
    *,
    mode: str,
    moe_mode: str,
    strata: dict[str, str],
    n_bootstrap: int,
    min_run_fraction: float,
    seed: int = 0,
    huber_delta: float = 1e-2,
) -> None:
    """Speedup curve, intervals, measured bounds and headline of ``moe`` against ``dense``, into
    ``ma``. Method: docs/fit.md#bootstrap-intervals-on-every-speedup"""
    hib = ma.higher_is_better
    dense_fit = ma.fits[dense]
    dense_pts, moe_pts = ma.points[dense], ma.points[moe]
    hi_c = dense_fit.compute_range[1]
    edge = dense_fit.predict(hi_c)
    edge = float(edge) if edge is not None else None
    if edge is not None:
        ma.dense_edge[moe] = edge
    levels = _levels(moe_curve, edge, hib)
    curve = []
    for q in levels:
        sp = speedup_at(dense_fit, moe_curve, q, chance=ma.chance)
        lb, ub = bounds_at(dense_pts, moe_pts, q, mode=mode, higher_is_better=hib)
        curve.append(
            replace(
                sp,
                lower_bound=lb.ratio if lb else None,
                upper_bound=ub.ratio if ub else None,
            )
        )

    log_values = ma.kind == "loss"
    d_rs = RunResampler.build(dense_pts, strata, log_values=log_values)
    m_rs = RunResampler.build(moe_pts, strata, log_values=log_values)
    noise = d_rs.noise + m_rs.noise  # seed noise pooled over both families
    d_rs.noise = m_rs.noise = noise
    usable = noise.df > 0
    if not usable:
        ma.interval[moe] = d_rs.why_not() or m_rs.why_not() or "no interval"
    elif n_bootstrap <= 0:
        ma.interval[moe] = "no interval: fit.bootstrap is 0"
    else:
        ma.seed_noise[moe] = noise
        ma.interval[moe] = interval_text(noise, n_bootstrap)
    # A resample evaluates each level at a fixed compute, not at its quality, which would fall
    # outside a resample's frontier whenever the seed that reached it is not drawn (docs/fit.md).
    anchors: list[tuple[str, float] | None] = []
    for q, sp in zip(levels, curve):
        if edge is not None and q == edge:
            anchors.append(("dense", hi_c))
        elif sp.c_moe is not None:
            anchors.append(("moe", sp.c_moe))
        else:
            anchors.append(None)
    samples: list[list[float]] = [[] for _ in levels]
    params: list[tuple[float, float, float]] = []
    n_ok = 0
    if usable and n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        for _ in range(n_bootstrap):
            sd = noise.draw_sd(rng)  # one seed spread per resample, for both families
            d_b, m_b = d_rs.draw(rng, sd), m_rs.draw(rng, sd)
            if isinstance(dense_fit, PowerLawFit):
                got = refit_power_law(dense_fit, d_b, min_run_fraction, huber_delta)
                if got is None:
                    continue
                params.append(got)

                def c_dense(t: float, got=got) -> float | None:
                    return _dense_compute_at(got, t)

                def dense_at(c: float, got=got) -> float | None:
                    return got[0] + math.exp(got[1] - got[2] * math.log(c))
            else:
                dense_b = fit_monotone(d_b, higher_is_better=hib, mode=dense_fit.mode)
                c_dense, dense_at = dense_b.compute_at, dense_b.predict
            try:
                moe_b = fit_monotone(
                    m_b, higher_is_better=hib, mode=moe_mode, min_run_fraction=min_run_fraction
                ).with_floor(moe_curve.floor)
            except MoelabError:
                continue
            n_ok += 1
            for i, anchor in enumerate(anchors):
                if curve[i].speedup is None or anchor is None:
                    continue
                side, c = anchor
                t = moe_b.predict(c) if side == "moe" else dense_at(c)
                if t is None or (ma.chance is not None and t <= ma.chance[1]):
                    continue
                cd, cm = (c_dense(t), c) if side == "moe" else (c, moe_b.compute_at(t))
                if cd is not None and cm is not None and cm > 0:
                    samples[i].append(cd / cm)
        if isinstance(dense_fit, PowerLawFit) and not dense_fit.intervals:
            set_intervals(dense_fit, params)
    ma.n_bootstrap[moe] = n_ok
    for i, sp in enumerate(curve):
        iv = percentile_interval(samples[i], n_ok) if sp.speedup is not None else None
        curve[i] = replace(
            sp,
            lo=iv[0] if iv else None,
            hi=iv[1] if iv else None,
            n_resamples=len(samples[i]),
        )
    ma.speedups[moe] = curve
    ma.bounds[moe] = measured_bounds(
        dense_pts, moe_pts, mode=mode, higher_is_better=hib, min_run_fraction=min_run_fraction
    )
    h = headline(curve, higher_is_better=hib, edge=edge)
    if h is not None:
        ma.headlines[moe] = h


# ---------------------------------------------------------------------------------------------
# Metrics


def analyse_loss(
    rows: list[CurvePoint],
    column: str,
    label: str,
    partner: dict[str, str],
    *,
    mode: str,
    bootstrap: int,
    min_run_fraction: float,
) -> MetricAnalysis:
    ma = MetricAnalysis(column, label, False, _points(rows, column))
    strata = strata_of(rows)
    dense_families = set(partner.values())
    for fam, pts in ma.points.items():
        rs = RunResampler.build(pts, strata)
        # A dense partner's parameter intervals come from the comparison's resamples.
        n = 0 if fam in dense_families and any(m in ma.points for m in partner) else bootstrap
        try:
            ma.fits[fam] = fit_power_law(
                pts, mode=mode, n_bootstrap=n, min_run_fraction=min_run_fraction, resampler=rs
            )
        except MoelabError as e:
            ma.fit_errors[fam] = str(e)
    moe_mode = moe_frontier_mode(mode)
    for moe, dense in partner.items():
        if dense not in ma.fits or moe not in ma.points:
            continue
        try:
            frontier = fit_monotone(
                ma.points[moe],
                higher_is_better=False,
                mode=moe_mode,
                min_run_fraction=min_run_fraction,
            )
        except MoelabError as e:
            ma.fit_errors.setdefault(moe, str(e))
            continue
        # Interpolated in log(L - E): the MoE's own fitted E, else the dense one's (docs/fit.md).
        own = ma.fits.get(moe)
        floor = own.E if isinstance(own, PowerLawFit) else ma.fits[dense].E
        frontier = frontier.with_floor(floor)
        compare(
            ma,
            moe,
            dense,
            frontier,
            mode=mode,
            moe_mode=moe_mode,
            strata=strata,
            n_bootstrap=bootstrap,
            min_run_fraction=min_run_fraction,
        )
    for fam in dense_families:  # a dense family no comparison resampled: its own bootstrap
        fit = ma.fits.get(fam)
        if isinstance(fit, PowerLawFit) and not fit.intervals and bootstrap > 0:
            rs = RunResampler.build(ma.points[fam], strata)
            if rs.usable():
                ma.fits[fam] = fit_power_law(
                    ma.points[fam],
                    mode=mode,
                    n_bootstrap=bootstrap,
                    min_run_fraction=min_run_fraction,
                    resampler=rs,
                )
    return ma


def _zero_shot_chance(meta: dict[str, Any], key: str = "chance") -> tuple[float, float] | None:
    """Interval a chance-level model's mean accuracy lands in (``key="score_chance"``: the same
    binomial band around the score's chance level, conservative for a score in [0, 1])."""
    tasks = [t for t in meta.get("zero_shot_tasks") or [] if t in meta.get("tasks", {})]
    info = meta.get("tasks", {})
    known = [t for t in tasks if info[t].get(key) is not None]
    if not known or len(known) != len(tasks):
        return None
    return mean_chance_interval(
        [info[t][key] for t in known], [int(info[t]["n_items"]) for t in known]
    )


def analyse_zero_shot(
    rows: list[CurvePoint],
    meta: dict[str, Any],
    partner: dict[str, str],
    *,
    column: str = ZERO_SHOT,
    bootstrap: int = 0,
) -> MetricAnalysis | None:
    """Mean zero-shot accuracy (``column`` ``zero_shot_mean``) or continuous score
    (``zero_shot_score_mean``) of the runs' final checkpoints. Method:
    docs/fit.md#accuracy-and-the-continuous-score"""
    pts = _points(rows, column)
    if not pts:
        return None
    score = column == ZERO_SHOT_SCORE
    ma = MetricAnalysis(column, SCORE_LABEL if score else ACCURACY_LABEL, True, pts)
    ma.kind = "score" if score else "accuracy"
    if not score:
        ma.chance = _zero_shot_chance(meta)
    for fam, fpts in pts.items():
        ma.fits[fam] = fit_monotone(fpts, higher_is_better=True, mode="all")
    strata = strata_of(rows)
    for moe, dense in partner.items():
        if dense in ma.fits and moe in ma.fits:
            compare(
                ma,
                moe,
                dense,
                ma.fits[moe],
                mode="all",
                moe_mode="all",
                strata=strata,
                n_bootstrap=bootstrap,
                min_run_fraction=0.0,
            )
            # A bound at a quality a chance-level model reaches is noise (docs/fit.md).
            band = ma.chance if not score else _zero_shot_chance(meta, "score_chance")
            if band is not None:
                ma.bounds[moe] = [b for b in ma.bounds.get(moe, []) if b.quality > band[1]]
    return ma


def seed_spread(rows: list[CurvePoint]) -> list[dict[str, Any]]:
    """Per design point with several seeds: the spread of the final in-domain (and mean
    out-of-domain) loss over its seeds, so a speedup can be told from seed noise."""
    finals: dict[str, list[CurvePoint]] = {}
    for r in rows:
        if r.final:
            finals.setdefault(stratum_key(r), []).append(r)
    out = []
    for group in finals.values():
        if len(group) < 2:
            continue
        entry: dict[str, Any] = {
            "family": group[0].family,
            "preset": group[0].preset,
            "model": group[0].grid.get("model") or group[0].preset,
            "runs": [r.run for r in group],
            "seeds": [r.seed for r in group],
        }
        for col in ("loss_in_domain", "loss_out_of_domain"):
            got = [getattr(r, col) for r in group]
            vals = np.array([v for v in got if v is not None], dtype=float)
            if len(vals) < 2:
                continue
            entry[col] = {
                "n": len(vals),
                "mean": float(vals.mean()),
                "std": float(vals.std(ddof=1)),
                "min": float(vals.min()),
                "max": float(vals.max()),
                "range_rel": float((vals.max() - vals.min()) / vals.mean()),
            }
        out.append(entry)
    return out


def analyse(
    rows: list[CurvePoint],
    meta: dict[str, Any],
    *,
    mode: str = "envelope",
    bootstrap: int = 200,
    min_run_fraction: float = 0.1,
) -> Analysis:
    if mode not in MODES:
        raise MoelabError(f"fit.frontier: {mode!r} is unknown; use one of {', '.join(MODES)}")
    families = list(dict.fromkeys(r.family for r in rows))
    dense, partner = pair_families(families)
    in_domains = list(meta.get("in_domains", []))
    out_domains = list(meta.get("out_domains", []))
    metrics: dict[str, MetricAnalysis] = {}
    loss_columns = [("loss_in_domain", "in-domain validation loss")]
    if out_domains:
        loss_columns.append(("loss_out_of_domain", "out-of-domain validation loss (mean)"))
    loss_columns += [(domain_metric(d), f"validation loss: {d}") for d in in_domains + out_domains]
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
    for column in (ZERO_SHOT, ZERO_SHOT_SCORE):
        zs = analyse_zero_shot(rows, meta, partner, column=column, bootstrap=bootstrap)
        if zs is not None:
            metrics[column] = zs
    return Analysis(
        families,
        dense,
        partner,
        metrics,
        in_domains,
        out_domains,
        min_run_fraction,
        mode,
        bootstrap,
        seed_spread(rows),
    )


# ---------------------------------------------------------------------------------------------
# fits.json


def _point_dict(p: SpeedupPoint) -> dict[str, Any]:
    return {
        "quality": p.quality,
        "c_dense": p.c_dense,
        "c_moe": p.c_moe,
        "speedup": p.speedup,
        "lo": p.lo,
        "hi": p.hi,
        "n_resamples": p.n_resamples,
        "label": p.label,
        "extrapolated": p.extrapolated,
        "lower_bound": p.lower_bound,
        "upper_bound": p.upper_bound,
        "contradicted_by_bound": p.contradicted,
        "note": p.note,
    }


def _fit_dict(fit: PowerLawFit | MonotoneFit) -> dict[str, Any]:
    if isinstance(fit, PowerLawFit):
        return {
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
            "points": [[p.run, p.compute, p.value, p.annealed] for p in fit.points],
            "residuals": fit.residuals,
        }
    return {
        "kind": "monotone",
        "knots_compute": fit.knots_compute,
        "knots_value": fit.knots_value,
        "residuals": fit.residuals,
        "compute_range": fit.compute_range,
        "mode": fit.mode,
    }


def fits_json(an: Analysis) -> dict[str, Any]:
    """Fits, speedups (with intervals, labels and bounds), headlines, measured bounds and the
    seed-to-seed spread as plain data (``fits.json``)."""
    out: dict[str, Any] = {
        "dense_family": an.dense_family,
        "partner": an.partner,
        "frontier": an.mode,
        "moe_frontier": moe_frontier_mode(an.mode),
        "min_run_fraction": an.min_run_fraction,
        "bootstrap": an.bootstrap,
        "labels": [INTERPOLATED, EXTRAPOLATED, MEASURED_BOUND],
        "metrics": {},
        "seed_spread": an.seed_spread,
    }
    for name, ma in an.metrics.items():
        out["metrics"][name] = {
            "label": ma.label,
            "kind": ma.kind,
            "higher_is_better": ma.higher_is_better,
            "fits": {fam: _fit_dict(fit) for fam, fit in ma.fits.items()},
            "fit_errors": ma.fit_errors,
            "chance_interval": ma.chance,
            "speedups": {fam: [_point_dict(p) for p in pts] for fam, pts in ma.speedups.items()},
            "headline": {fam: h.as_dict() for fam, h in ma.headlines.items()},
            "measured_bounds": {fam: [b.as_dict() for b in bs] for fam, bs in ma.bounds.items()},
            "interval": ma.interval,
            "seed_noise": {
                fam: _noise_dict(n, "log loss" if ma.kind == "loss" else "value")
                for fam, n in ma.seed_noise.items()
            },
            "n_bootstrap": ma.n_bootstrap,
            "dense_edge_quality": ma.dense_edge,
        }
    return out
