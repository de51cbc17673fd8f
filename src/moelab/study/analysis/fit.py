"""Quality against training compute: power-law fits (losses), monotone fits (accuracies, and a
family's measured frontier) and the speedup factor, on :class:`EvalPoint` s (compute: training
FLOPs spent so far). Outputs are plain dataclasses. Method: docs/fit.md
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import least_squares

from moelab.errors import MoelabError
from moelab.study.analysis.points import EvalPoint  # noqa: F401 (re-exported from here)
from moelab.study.plan.config import MODES  # the study file's fit.frontier

if TYPE_CHECKING:
    from moelab.study.analysis.bootstrap import RunResampler


# ---------------------------------------------------------------------------------------------
# Which points a fit sees


def select_points(
    points: Iterable[EvalPoint],
    mode: str = "envelope",
    *,
    higher_is_better: bool = False,
    min_run_fraction: float = 0.0,
) -> list[EvalPoint]:
    """The points a fit uses, sorted by compute; the envelopes keep every point strictly better
    than all points at lower or equal compute. ``mode``, ``min_run_fraction``:
    docs/fit.md#loss-a-power-law-on-the-compute-efficient-frontier"""
    if mode not in MODES:
        raise MoelabError(f"fit mode {mode!r} is unknown; use one of {', '.join(MODES)}")
    pts = [p for p in points]
    for p in pts:
        if not (math.isfinite(p.compute) and p.compute > 0 and math.isfinite(p.value)):
            raise MoelabError(
                f"run {p.run!r}: evaluation point needs a positive compute and a finite value, "
                f"got compute={p.compute}, value={p.value}"
            )
    if min_run_fraction > 0:
        last = {}
        for p in pts:
            last[p.run] = max(last.get(p.run, 0.0), p.compute)
        pts = [p for p in pts if p.compute >= min_run_fraction * last[p.run]]
    if mode == "annealed":
        pts = [p for p in pts if p.annealed]
    sign = -1.0 if higher_is_better else 1.0  # compare as "lower is better"
    pts.sort(key=lambda p: (p.compute, sign * p.value))
    if mode == "all":
        return pts
    if mode == "final":
        final: dict[str, EvalPoint] = {}
        for p in pts:  # sorted by compute: the last one seen per run wins
            final[p.run] = p
        return sorted(final.values(), key=lambda p: (p.compute, sign * p.value))
    frontier: list[EvalPoint] = []
    best = math.inf
    for p in pts:
        if sign * p.value < best:
            frontier.append(p)
            best = sign * p.value
    return frontier


# ---------------------------------------------------------------------------------------------
# Power law with an irreducible term


@dataclass
class PowerLawFit:
    """``L(C) = E + A * C**-alpha`` (C in FLOPs). ``log_A`` is kept because ``A`` itself can be
    huge; ``predict`` and ``compute_at`` use it."""

    E: float
    A: float
    alpha: float
    log_A: float
    points: list[EvalPoint]  # the points fitted (after selection), sorted by compute
    residuals: list[float]  # log(observed) - log(fitted), one per point
    rms_residual: float
    n_runs: int
    compute_range: tuple[float, float]  # measured compute covered by the fitted points
    mode: str
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # bootstrap, by name
    n_bootstrap: int = 0  # resamples that gave a fit
    higher_is_better: bool = False

    def predict(self, compute: float | np.ndarray) -> float | np.ndarray:
        c = np.asarray(compute, dtype=float)
        out = self.E + np.exp(self.log_A - self.alpha * np.log(c))
        return float(out) if out.ndim == 0 else out

    def compute_at(self, value: float) -> float | None:
        """Compute the fit needs to reach loss ``value``; ``None`` at or below ``E``."""
        if not value > self.E:
            return None
        return math.exp((self.log_A - math.log(value - self.E)) / self.alpha)


def _fit_once(
    x: np.ndarray, log_y: np.ndarray, y_min: float, huber_delta: float, starts: list[np.ndarray]
) -> tuple[np.ndarray, float] | None:
    """Best (E, log_a, alpha) over ``starts`` for log y = log(E + exp(log_a - alpha x))."""

    def residual(theta: np.ndarray) -> np.ndarray:
        e, log_a, alpha = theta
        return log_y - np.logaddexp(math.log(e) if e > 0 else -np.inf, log_a - alpha * x)

    def jacobian(theta: np.ndarray) -> np.ndarray:
        e, log_a, alpha = theta
        u = log_a - alpha * x
        pred = e + np.exp(u)
        share = np.exp(u) / pred  # d log(pred) / d u
        return np.stack([-1.0 / pred, -share, x * share], axis=1)

    lower = [0.0, -np.inf, 1e-4]
    upper = [y_min, np.inf, 10.0]
    best: tuple[np.ndarray, float] | None = None
    for theta0 in starts:
        theta0 = np.clip(theta0, [0.0, -1e6, 1e-4], [y_min * (1 - 1e-9), 1e6, 10.0])
        try:
            res = least_squares(
                residual,
                theta0,
                jac=jacobian,
                bounds=(lower, upper),
                loss="huber",
                f_scale=huber_delta,
                method="trf",
            )
        except (ValueError, FloatingPointError):
            continue
        if not np.all(np.isfinite(res.x)):
            continue
        if best is None or res.cost < best[1]:
            best = (res.x, float(res.cost))
    return best


def _huber_cost(r: np.ndarray, delta: float) -> float:
    a = np.abs(r)
    return float(np.sum(np.where(a <= delta, 0.5 * r * r, delta * a - 0.5 * delta * delta)))


def _polish(
    x: np.ndarray,
    log_y: np.ndarray,
    y_min: float,
    huber_delta: float,
    theta0: np.ndarray,
    max_iter: int = 200,
) -> tuple[np.ndarray, float] | None:
    """:func:`_fit_once`'s objective by Levenberg-Marquardt on reweighted Huber residuals from
    ``theta0`` (bounds by projection): near a resample's optimum it converges in a few steps, at
    a fraction of ``least_squares``'s overhead. ``None``: not converged."""
    lo = np.array([0.0, -1e6, 1e-4])
    hi = np.array([y_min * (1 - 1e-9), 1e6, 10.0])

    def resid(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = theta[1] - theta[2] * x
        pred = theta[0] + np.exp(u)
        return log_y - np.log(pred), np.exp(u) / pred

    theta = np.clip(np.asarray(theta0, dtype=float), lo, hi)
    with np.errstate(all="ignore"):
        r, share = resid(theta)
        cost = _huber_cost(r, huber_delta)
        lam = 1e-3
        for _ in range(max_iter):
            pred = theta[0] + np.exp(theta[1] - theta[2] * x)
            jac = np.stack([1.0 / pred, share, -x * share], axis=1)  # d log(pred) / d theta
            a = np.abs(r)
            w = np.where(a <= huber_delta, 1.0, huber_delta / np.maximum(a, 1e-300))
            jtj = jac.T @ (w[:, None] * jac)
            grad = jac.T @ (w * r)
            if np.max(np.abs(grad)) < 1e-12 * (1.0 + cost):
                return theta, cost
            try:
                step = np.linalg.solve(jtj + lam * np.diag(np.diag(jtj) + 1e-12), grad)
            except np.linalg.LinAlgError:
                return None
            new = np.clip(theta + step, lo, hi)
            r_new, share_new = resid(new)
            new_cost = _huber_cost(r_new, huber_delta)
            if np.isfinite(new_cost) and new_cost <= cost:
                done = cost - new_cost <= 1e-15 * (1.0 + cost) and np.allclose(
                    new, theta, rtol=1e-10, atol=1e-12
                )
                theta, r, share, cost = new, r_new, share_new, new_cost
                lam = max(lam / 10, 1e-12)
                if done:
                    return theta, cost
            else:
                lam *= 10
                if lam > 1e12:
                    return theta, cost  # no downhill step left: a (projected) minimum
    return None


def _on_bound(theta: np.ndarray, y: np.ndarray) -> bool:
    e, alpha = theta[0], theta[2]
    return e <= 1e-9 * y.min() or e >= y.min() * (1 - 1e-6) or alpha <= 1.1e-4 or alpha >= 9.99


def _starts(x: np.ndarray, y: np.ndarray, quick: bool = False) -> list[np.ndarray]:
    """Starting points: for several guesses of E, a straight line through log(y - E) vs x, and
    two fixed slopes through the mean. ``quick``: only the straight lines for two guesses."""
    y_min = float(y.min())
    starts = []
    for frac in (0.0, 0.7) if quick else (0.0, 0.3, 0.6, 0.85, 0.95):
        e0 = frac * y_min
        z = np.log(y - e0 * (1 - 1e-6))
        slope, intercept = np.polyfit(x, z, 1)
        if -slope > 0:
            starts.append(np.array([e0, intercept, -slope]))
        if quick:
            continue
        for alpha0 in (0.1, 0.5):
            starts.append(np.array([e0, float(np.mean(z + alpha0 * x)), alpha0]))
    return starts


def _fit_selected(
    pts: Sequence[EvalPoint], huber_delta: float, extra_starts: list[np.ndarray] | None = None
) -> tuple[float, float, float] | None:
    """(E, log_A, alpha) for already selected points, or None when they cannot pin three
    parameters down."""
    compute = np.array([p.compute for p in pts], dtype=float)
    y = np.array([p.value for p in pts], dtype=float)
    if len(pts) < 3 or len(np.unique(compute)) < 2 or np.any(y <= 0):
        return None
    log_c = np.log(compute)
    log_c_ref = float(log_c.mean())  # conditioning: x is centred, O(1)
    x = log_c - log_c_ref
    # With a warm start (bootstrap resamples) a few extra starts suffice, each polished by the
    # small Levenberg-Marquardt; least_squares only where none of them converges.
    starts = _starts(x, y, quick=bool(extra_starts))
    best = None
    if extra_starts:
        # starts given in (E, log_A, alpha); convert log_A to the centred log_a
        starts = [np.array([s[0], s[1] - s[2] * log_c_ref, s[2]]) for s in extra_starts] + starts
        for i, theta0 in enumerate(starts):
            got = _polish(x, np.log(y), float(y.min()), huber_delta, theta0)
            if got is not None and (best is None or got[1] < best[1]):
                best = got
            # The warm starts' optimum stands unless it sits on a bound (E = 0 or E = min L),
            # where the resample may have its optimum elsewhere: then try the other starts too.
            if i == len(extra_starts) - 1 and best is not None and not _on_bound(best[0], y):
                break
    if best is None:
        best = _fit_once(x, np.log(y), float(y.min()), huber_delta, starts)
    if best is None:
        return None
    e, log_a, alpha = (float(v) for v in best[0])
    return e, log_a + alpha * log_c_ref, alpha


def fit_power_law(
    points: Iterable[EvalPoint],
    *,
    mode: str = "envelope",
    min_run_fraction: float = 0.0,
    huber_delta: float = 1e-2,
    n_bootstrap: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    resampler: RunResampler | None = None,
) -> PowerLawFit:
    """Fit ``L(C) = E + A * C**-alpha`` to one family's loss points, with level-``ci`` intervals
    from ``n_bootstrap`` resamples (``huber_delta`` in log-loss units: 0.01 is 1%). Method:
    docs/fit.md#loss-a-power-law-on-the-compute-efficient-frontier"""
    all_points = list(points)
    pts = select_points(all_points, mode, min_run_fraction=min_run_fraction)
    runs = sorted({p.run for p in all_points})
    fitted = _fit_selected(pts, huber_delta)
    if fitted is None:
        hint = "add runs or budgets"
        if mode == "annealed":
            hint = (
                "train with schedule: wsd and cooldown branches for annealed points at several "
                "budgets, or fit with frontier: envelope"
            )
        raise MoelabError(
            f"a power-law fit needs at least 3 positive points at 2 or more compute values; "
            f"the {mode!r} selection has {len(pts)} from {len(runs)} run(s): {hint}"
        )
    e, log_a, alpha = fitted
    compute = np.array([p.compute for p in pts])
    y = np.array([p.value for p in pts])
    pred = e + np.exp(log_a - alpha * np.log(compute))
    resid = np.log(y) - np.log(pred)
    fit = PowerLawFit(
        E=e,
        A=_safe_exp(log_a),
        alpha=alpha,
        log_A=log_a,
        points=pts,
        residuals=[float(r) for r in resid],
        rms_residual=float(np.sqrt(np.mean(resid**2))),
        n_runs=len({p.run for p in pts}),
        compute_range=(float(compute.min()), float(compute.max())),
        mode=mode,
    )
    if resampler is None and len(runs) >= 3:
        from moelab.study.analysis.bootstrap import RunResampler  # bootstrap.py imports EvalPoint

        resampler = RunResampler.build(all_points)  # one stratum: every run
    if n_bootstrap > 0 and resampler is not None and resampler.usable():
        samples = []
        rng = np.random.default_rng(seed)
        for _ in range(n_bootstrap):
            got = refit_power_law(fit, resampler.draw(rng), min_run_fraction, huber_delta)
            if got is not None:
                samples.append(got)
        set_intervals(fit, samples, ci)
    return fit


def _safe_exp(v: float) -> float:
    return math.exp(v) if v < 709 else math.inf


def refit_power_law(
    fit: PowerLawFit, points: list[EvalPoint], min_run_fraction: float, huber_delta: float
) -> tuple[float, float, float] | None:
    """(E, log_A, alpha) of ``fit``'s selection rebuilt from ``points`` (a bootstrap resample),
    started from ``fit``'s optimum and two quick guesses: the full-data optimum is close to every
    resample's."""
    pts = select_points(points, fit.mode, min_run_fraction=min_run_fraction)
    return _fit_selected(pts, huber_delta, extra_starts=[np.array([fit.E, fit.log_A, fit.alpha])])


def set_intervals(
    fit: PowerLawFit, samples: list[tuple[float, float, float]], ci: float = 0.95
) -> None:
    """Percentile intervals of E, A, alpha from bootstrap ``samples`` of (E, log_A, alpha)."""
    if not samples:
        return
    arr = np.array(samples)  # (n, 3): E, log_A, alpha
    (e_lo, la_lo, al_lo), (e_hi, la_hi, al_hi) = np.percentile(
        arr, [50 * (1 - ci), 50 * (1 + ci)], axis=0
    )
    fit.intervals = {
        "E": (float(e_lo), float(e_hi)),
        "A": (_safe_exp(la_lo), _safe_exp(la_hi)),
        "log_A": (float(la_lo), float(la_hi)),
        "alpha": (float(al_lo), float(al_hi)),
    }
    fit.n_bootstrap = len(samples)


# ---------------------------------------------------------------------------------------------
# Monotone curves: accuracy fits, and a family's measured frontier


@dataclass
class MonotoneFit:
    """A strictly monotone curve of value against log compute through its knots, without
    extrapolation. Between knots linear in the value, or, with ``floor``, in log(value - floor):
    exact for a power law (docs/fit.md#speedup-factor)."""

    knots_compute: list[float]  # strictly increasing
    knots_value: list[float]  # strictly monotone
    higher_is_better: bool
    points: list[EvalPoint]
    residuals: list[float]  # observed - predict(compute), one per point
    compute_range: tuple[float, float]
    mode: str
    floor: float | None = None

    def _t(self, v: np.ndarray | float) -> np.ndarray:
        v = np.asarray(v, dtype=float)
        return v if self.floor is None else np.log(np.maximum(v - self.floor, 1e-300))

    def with_floor(self, floor: float | None) -> MonotoneFit:
        """The same knots interpolated in log(value - ``floor``); unchanged when ``floor`` is
        None or not below every knot."""
        if floor is None or not math.isfinite(floor) or floor >= min(self.knots_value):
            return self
        return replace(self, floor=float(floor))

    def predict(self, compute: float) -> float | None:
        """Fitted value at ``compute``: interpolated between knots, flat from the end knots to
        the ends of the measured range; ``None`` outside the measured range."""
        lo, hi = self.compute_range
        if not lo * (1 - 1e-12) <= compute <= hi * (1 + 1e-12):
            return None
        got = float(
            np.interp(math.log(compute), np.log(self.knots_compute), self._t(self.knots_value))
        )
        return got if self.floor is None else self.floor + math.exp(got)

    def compute_at(self, value: float) -> float | None:
        """Compute at which the curve reaches ``value``; ``None`` outside its value range, and
        for a flat curve (isotonic regression pooled points at several computes into one
        value: it reaches that value at no particular compute)."""
        raw = np.asarray(self.knots_value)
        log_c = np.log(self.knots_compute)
        if len(raw) == 1:
            lo, hi = self.compute_range
            if lo < hi * (1 - 1e-12):
                return None
            return float(self.knots_compute[0]) if math.isclose(value, raw[0]) else None
        inside = raw.min() <= value <= raw.max()
        if not inside:
            return None
        v, t = self._t(raw), float(self._t(value))
        if v[0] > v[-1]:  # np.interp needs increasing x: flip the sign
            v, t = -v, -t
        return float(math.exp(np.interp(t, v, log_c)))


def fit_monotone(
    points: Iterable[EvalPoint],
    *,
    higher_is_better: bool = True,
    mode: str = "all",
    min_run_fraction: float = 0.0,
) -> MonotoneFit:
    """Isotonic regression of value on log compute (pool-adjacent-violators), for accuracies
    (``mode="all"`` averages the noise) or for a family's measured loss frontier
    (``higher_is_better=False, mode="envelope"``, where it keeps every frontier point)."""
    pts = select_points(
        points, mode, higher_is_better=higher_is_better, min_run_fraction=min_run_fraction
    )
    if not pts:
        raise MoelabError("a monotone fit needs at least one evaluation point")
    sign = 1.0 if higher_is_better else -1.0  # fit an increasing curve of sign * value
    # Pool equal computes first, so blocks have distinct positions. Each block holds
    # [sum of sign * value, weight, sum of log compute].
    blocks: list[list[float]] = []
    for p in pts:
        lc = math.log(p.compute)
        if blocks and math.isclose(blocks[-1][2] / blocks[-1][1], lc, abs_tol=1e-12):
            blocks[-1][0] += sign * p.value
            blocks[-1][1] += 1
            blocks[-1][2] += lc
        else:
            blocks.append([sign * p.value, 1.0, lc])
        # pool while the last block is not above the one before (>= makes values strict)
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            s, w, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += w
            blocks[-1][2] += c
    knots_c = [math.exp(c / w) for _, w, c in blocks]
    knots_v = [sign * s / w for s, w, _ in blocks]
    fit = MonotoneFit(
        knots_compute=knots_c,
        knots_value=knots_v,
        higher_is_better=higher_is_better,
        points=pts,
        residuals=[],
        compute_range=(pts[0].compute, pts[-1].compute),
        mode=mode,
    )
    fit.residuals = [p.value - fit.predict(p.compute) for p in pts]
    return fit


# ---------------------------------------------------------------------------------------------
# Speedup factor


INTERPOLATED = "interpolated (fit)"
EXTRAPOLATED = "extrapolated"
MEASURED_BOUND = "measured bound"


@dataclass(frozen=True)
class SpeedupPoint:
    """Speedup at one quality level; ``speedup`` None where there is none (``note`` says why).
    ``extrapolated``: outside the measured dense range, or a quality the fit cannot reach
    (docs/fit.md#three-labels). ``lo``/``hi``: bootstrap interval from ``n_resamples``
    resamples; ``lower_bound``/``upper_bound``: the measured bounds at this quality."""

    quality: float
    c_dense: float | None
    c_moe: float | None
    speedup: float | None
    extrapolated: bool
    note: str = ""
    lo: float | None = None
    hi: float | None = None
    n_resamples: int = 0
    lower_bound: float | None = None
    upper_bound: float | None = None

    @property
    def contradicted(self) -> str:
        """``">="`` or ``"<="`` when a measured bound at this quality contradicts the value
        (the value lies below the lower bound or above the upper one), else empty."""
        if self.speedup is None:
            return ""
        if self.lower_bound is not None and self.speedup < self.lower_bound:
            return ">="
        if self.upper_bound is not None and self.speedup > self.upper_bound:
            return "<="
        return ""

    @property
    def label(self) -> str:
        """``"interpolated (fit)"``: the dense curve inverted inside its measured compute range;
        ``"extrapolated"``: outside it; empty where there is no value."""
        if self.speedup is None:
            return ""
        return EXTRAPOLATED if self.extrapolated else INTERPOLATED


def chance_interval(chance: float, n_items: int, z: float = 1.96) -> tuple[float, float]:
    """Accuracy interval a chance-level guesser lands in: ``chance +- z * sqrt(p(1-p)/n)``."""
    if n_items < 1:
        raise MoelabError(f"chance interval needs n_items >= 1, got {n_items}")
    half = z * math.sqrt(chance * (1 - chance) / n_items)
    return chance - half, chance + half


def mean_chance_interval(
    chances: Sequence[float], n_items: Sequence[int], z: float = 1.96
) -> tuple[float, float]:
    """Chance interval of a mean accuracy over tasks (task ``i``: chance ``chances[i]`` on
    ``n_items[i]`` items), with the tasks' binomial variances combined."""
    if not chances or len(chances) != len(n_items) or min(n_items) < 1:
        raise MoelabError("mean chance interval needs one positive item count per task")
    t = len(chances)
    mean = sum(chances) / t
    var = sum(p * (1 - p) / n for p, n in zip(chances, n_items)) / t**2
    half = z * math.sqrt(var)
    return mean - half, mean + half


def speedup_at(
    dense: PowerLawFit | MonotoneFit,
    moe: MonotoneFit,
    quality: float,
    *,
    chance: tuple[float, float] | None = None,
) -> SpeedupPoint:
    """``c_dense(quality) / c_moe(quality)`` (``moe`` from :func:`fit_monotone`); for accuracies,
    ``chance`` (:func:`chance_interval`): no speedup at or below its top."""
    if dense.higher_is_better != moe.higher_is_better:
        raise MoelabError("speedup: the dense and MoE curves measure different kinds of quality")
    if chance is not None and moe.higher_is_better and quality <= chance[1]:
        return SpeedupPoint(quality, None, None, None, False, "within the chance interval")
    c_moe = moe.compute_at(quality)
    c_dense = dense.compute_at(quality)
    if c_dense is None:
        why = (
            "at or below the dense fit's irreducible loss"
            if isinstance(dense, PowerLawFit)
            else "the dense curve is flat (one value over its whole range)"
            if len(dense.knots_value) == 1 and dense.compute_range[0] < dense.compute_range[1]
            else "outside the dense family's measured range"
        )
        return SpeedupPoint(quality, None, c_moe, None, True, why)
    if c_moe is None:
        return SpeedupPoint(quality, c_dense, None, None, True, "outside the MoE's measured range")
    lo, hi = dense.compute_range
    inside = lo * (1 - 1e-9) <= c_dense <= hi * (1 + 1e-9)
    note = "" if inside else "outside the measured dense compute range"
    return SpeedupPoint(quality, c_dense, c_moe, c_dense / c_moe, not inside, note)


def speedup_curve(
    dense: PowerLawFit | MonotoneFit,
    moe: MonotoneFit,
    qualities: Iterable[float] | None = None,
    *,
    chance: tuple[float, float] | None = None,
) -> list[SpeedupPoint]:
    """Speedup as a function of compute: at each of the MoE's measured knots (default) or at the
    given quality levels. Plot ``speedup`` against ``c_dense`` (the paper's x axis)."""
    levels = list(moe.knots_value if qualities is None else qualities)
    return [speedup_at(dense, moe, q, chance=chance) for q in levels]


def speedup_at_compute(
    dense: PowerLawFit | MonotoneFit,
    moe: MonotoneFit,
    dense_compute: float,
    *,
    chance: tuple[float, float] | None = None,
) -> SpeedupPoint | None:
    """Speedup at the quality the dense fit reaches with ``dense_compute`` FLOPs (the paper's x
    axis); ``None`` where the dense fit has no value there."""
    quality = dense.predict(dense_compute)
    if quality is None:
        return None
    return speedup_at(dense, moe, float(quality), chance=chance)
