"""Power-law and monotone fits of quality against compute, and the speedup factor."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moelab.errors import MoelabError
from moelab.study.analysis.fit import (
    EvalPoint,
    chance_interval,
    fit_monotone,
    fit_power_law,
    mean_chance_interval,
    select_points,
    speedup_at,
    speedup_at_compute,
    speedup_curve,
)

E_TRUE, ALPHA_TRUE = 1.8, 0.3
A_TRUE = 4.0 * 1e12**ALPHA_TRUE  # loss 5.8 at 1e12 FLOPs


def true_loss(c, e=E_TRUE, a=A_TRUE, alpha=ALPHA_TRUE):
    return e + a * np.asarray(c, dtype=float) ** -alpha


def family(
    n_runs=8,
    per_run=6,
    noise=0.003,
    run_noise=0.0,
    seed=0,
    shift=1.0,
    e=E_TRUE,
    a=A_TRUE,
    alpha=ALPHA_TRUE,
    prefix="r",
):
    """Runs whose final compute grows by sqrt(10) each; each logs ``per_run`` evaluations over
    its last decade of compute. ``shift`` multiplies effective compute (an MoE k times more
    efficient has shift=k). Noise is multiplicative: per point, plus a per-run offset."""
    rng = np.random.default_rng(seed)
    pts = []
    for r in range(n_runs):
        c_final = 10 ** (12.5 + 0.5 * r)
        offset = rng.normal(0, run_noise) if run_noise else 0.0
        for c in np.geomspace(c_final / 10, c_final, per_run):
            value = true_loss(c * shift, e, a, alpha) * math.exp(offset + rng.normal(0, noise))
            pts.append(EvalPoint(f"{prefix}{r}", float(c), float(value)))
    return pts


def test_fitter_recovers_known_parameters():
    fit = fit_power_law(family(noise=0.003), mode="all", n_bootstrap=0)
    assert fit.E == pytest.approx(E_TRUE, rel=0.05)
    assert fit.alpha == pytest.approx(ALPHA_TRUE, abs=0.02)
    grid = np.geomspace(1e12, 1e16, 20)
    assert np.max(np.abs(fit.predict(grid) / true_loss(grid) - 1)) < 0.01
    assert len(fit.residuals) == len(fit.points) == 48
    assert fit.rms_residual < 0.006  # noise is 0.3%
    assert fit.n_runs == 8 and fit.compute_range == (pytest.approx(10**11.5), 10**16)


def wsd_family(finals, n_branches, noise, seed, stable_excess=0.04):
    """Runs trained as WSD with cooldown branches: each run of final compute ``c_f`` has annealed
    points at ``c_f / 2**k`` (k = 0..n_branches, the branch ends and the decayed final point) on
    the true frontier, and a stable-phase point just before each fork that sits
    ``stable_excess`` above it (not annealed). Noise: multiplicative, per point."""
    rng = np.random.default_rng(seed)
    pts = []
    for r, c_final in enumerate(finals):
        for k in range(n_branches + 1):
            c = c_final / 2**k
            noisy = float(true_loss(c) * math.exp(rng.normal(0, noise)))
            pts.append(EvalPoint(f"r{r}", c, noisy, annealed=True))
            c_fork = 0.8 * c
            stable = true_loss(c_fork) * (1 + stable_excess) * math.exp(rng.normal(0, noise))
            pts.append(EvalPoint(f"r{r}", c_fork, float(stable), annealed=False))
    return pts


# Seven sizes three times apart, five cooldowns each (budgets 1/2 .. 1/32): 41 frontier points
# over 4.4 decades of compute. At 0.3% noise (the rounding-level spread of CPU-study losses)
# the Cramer-Rao floor of this design is sd(E) = 0.27%, sd(alpha) = 0.59%, so the tolerances
# below are 3.7 and 3.4 standard deviations.
RECOVERY_FINALS = 1e12 * 3.0 ** np.arange(7)


@pytest.mark.parametrize("seed", range(6))
def test_fitter_recovers_alpha_within_2_and_E_within_1_percent(seed):
    pts = wsd_family(RECOVERY_FINALS, 5, noise=0.003, seed=seed)
    fit = fit_power_law(pts, mode="annealed", n_bootstrap=0)
    assert all(p.annealed for p in fit.points) and len(fit.points) >= 35
    assert fit.alpha == pytest.approx(ALPHA_TRUE, rel=0.02)
    assert fit.E == pytest.approx(E_TRUE, rel=0.01)


def test_annealed_frontier_is_what_keeps_the_fit_unbiased():
    """The stable-phase points sit 4% above the frontier between the annealed ones: the plain
    envelope takes them in and bends the curve; the annealed selection leaves them out."""
    errs = {"annealed": [], "envelope": []}
    for seed in range(4):
        pts = wsd_family(RECOVERY_FINALS, 5, noise=0.003, seed=seed)
        for mode in errs:
            fit = fit_power_law(pts, mode=mode, n_bootstrap=0)
            errs[mode].append(abs(fit.alpha / ALPHA_TRUE - 1))
    assert max(errs["annealed"]) < 0.02
    assert min(errs["envelope"]) > 2 * max(errs["annealed"])


def test_fitter_error_is_at_the_statistical_floor_on_a_small_design():
    """Three sizes and three cooldowns each (1.9 decades, as a CPU study): E cannot be pinned to
    1% by any fitter at 0.3% noise. The fitter's spread over noise draws matches the Cramer-Rao
    standard deviation, so what remains is the design's, which the bootstrap reports."""
    finals = np.array([4e12, 1.2e13, 3.6e13])
    errs = []
    for seed in range(16):
        pts = wsd_family(finals, 3, noise=0.003, seed=seed)
        fit = fit_power_law(pts, mode="annealed", n_bootstrap=0)
        errs.append((fit.E / E_TRUE - 1, fit.alpha / ALPHA_TRUE - 1))
    c = np.array([p.compute for p in fit.points])
    u = math.log(A_TRUE) - ALPHA_TRUE * np.log(c)
    share = np.exp(u) / (E_TRUE + np.exp(u))
    jac = np.stack([1 / (E_TRUE + np.exp(u)), share, -np.log(c) * share], axis=1)
    sd = np.sqrt(np.diag(0.003**2 * np.linalg.inv(jac.T @ jac)))
    rms = np.sqrt(np.mean(np.square(errs), axis=0))
    assert sd[0] / E_TRUE > 0.01  # the design, not the fitter, limits E here
    assert rms[0] < 1.3 * sd[0] / E_TRUE and rms[1] < 1.3 * sd[2] / ALPHA_TRUE


def test_annealed_selection_keeps_annealed_points_only():
    pts = [
        EvalPoint("a", 1, 5.0, annealed=True),
        EvalPoint("a", 2, 4.1),
        EvalPoint("a", 3, 4.2, annealed=True),
        EvalPoint("b", 3, 4.0),
        EvalPoint("b", 6, 3.5, annealed=True),
        EvalPoint("b", 8, 3.6, annealed=True),  # annealed but not better: off the frontier
    ]
    got = select_points(pts, "annealed")
    assert [(p.run, p.compute) for p in got] == [("a", 1), ("a", 3), ("b", 6)]
    assert [p.compute for p in select_points(pts, "envelope")] == [1, 2, 3, 6]
    with pytest.raises(MoelabError, match="schedule: wsd"):
        fit_power_law([EvalPoint("a", c, 5.0 / c) for c in (1.0, 2.0, 4.0)], mode="annealed")


def test_noise_free_fit_is_exact_from_any_selection():
    for mode in ("envelope", "final", "all"):
        fit = fit_power_law(family(noise=0.0), mode=mode, n_bootstrap=0)
        assert fit.E == pytest.approx(E_TRUE, rel=1e-4), mode
        assert fit.alpha == pytest.approx(ALPHA_TRUE, rel=1e-4), mode
        assert fit.A == pytest.approx(A_TRUE, rel=1e-3), mode
        assert max(abs(r) for r in fit.residuals) < 1e-6


def test_huber_loss_resists_an_outlier():
    pts = family(noise=0.003, seed=1)
    bad = pts[20]
    pts[20] = EvalPoint(bad.run, bad.compute, bad.value * 1.4)  # a broken evaluation
    robust = fit_power_law(pts, mode="all", n_bootstrap=0)
    squares = fit_power_law(pts, mode="all", n_bootstrap=0, huber_delta=100.0)  # plain LSQ
    assert robust.E == pytest.approx(E_TRUE, rel=0.05)
    assert abs(robust.alpha - ALPHA_TRUE) < abs(squares.alpha - ALPHA_TRUE)
    assert max(robust.residuals, key=abs) == pytest.approx(math.log(1.4), abs=0.02)


def test_bootstrap_over_runs_contains_the_truth():
    pts = family(n_runs=8, noise=0.002, run_noise=0.006, seed=3)
    fit = fit_power_law(pts, mode="envelope", n_bootstrap=60, seed=0)
    assert fit.n_bootstrap >= 55
    for name, truth in (("E", E_TRUE), ("alpha", ALPHA_TRUE), ("A", A_TRUE)):
        lo, hi = fit.intervals[name]
        assert lo <= truth <= hi, (name, lo, hi)
    lo, hi = fit.intervals["alpha"]
    assert hi - lo < 0.1  # informative, not just wide
    # no bootstrap from too few runs (resamples of 2 runs say nothing about run-to-run noise)
    two = [p for p in pts if p.run in ("r0", "r7")]
    assert fit_power_law(two, mode="all", n_bootstrap=20).intervals == {}


def test_selection_envelope_final_and_early_cut():
    a = [EvalPoint("a", 1, 5.0), EvalPoint("a", 2, 4.0), EvalPoint("a", 4, 3.5)]
    b = [EvalPoint("b", 2, 3.8), EvalPoint("b", 3, 3.9), EvalPoint("b", 8, 3.0)]
    env = select_points(a + b, "envelope")
    assert [(p.run, p.compute) for p in env] == [("a", 1), ("b", 2), ("a", 4), ("b", 8)]
    assert [(p.run, p.compute) for p in select_points(b + a, "final")] == [("a", 4), ("b", 8)]
    assert len(select_points(a + b, "all")) == 6
    cut = select_points(a + b, "envelope", min_run_fraction=0.5)
    assert [(p.run, p.compute) for p in cut] == [("a", 2), ("a", 4), ("b", 8)]
    acc = [EvalPoint("a", 1, 0.3), EvalPoint("a", 2, 0.28), EvalPoint("b", 3, 0.35)]
    up = select_points(acc, "envelope", higher_is_better=True)
    assert [p.value for p in up] == [0.3, 0.35]


def test_speedup_of_two_known_curves_equals_the_analytic_value():
    dense = fit_power_law(family(noise=0.0), n_bootstrap=0)
    # An MoE that reaches every loss with 4x less compute.
    moe = fit_monotone(
        family(noise=0.0, shift=4.0, n_runs=6, prefix="m"), higher_is_better=False, mode="envelope"
    )
    curve = speedup_curve(dense, moe)
    inside = [s for s in curve if not s.extrapolated]
    assert len(inside) >= 20
    for s in inside:
        assert s.speedup == pytest.approx(4.0, rel=1e-3)
        assert s.c_dense == pytest.approx(4.0 * s.c_moe, rel=1e-3)

    # Different exponents: L_moe = E + B C^-beta, so c_dense(t)/c_moe(t) has a closed form.
    b, beta = 2.0 * 1e12**0.35, 0.35
    moe2 = fit_monotone(
        family(noise=0.0, a=b, alpha=beta, prefix="m"), higher_is_better=False, mode="envelope"
    )
    for s in speedup_curve(dense, moe2):
        if s.speedup is None or s.extrapolated:
            continue
        t = s.quality
        analytic = ((t - E_TRUE) / A_TRUE) ** (-1 / ALPHA_TRUE) / ((t - E_TRUE) / b) ** (-1 / beta)
        assert s.speedup == pytest.approx(analytic, rel=1e-3)


def test_speedup_flags_extrapolation():
    dense = fit_power_law(family(noise=0.0, n_runs=4), n_bootstrap=0)  # compute 10^11.5..10^14
    moe = fit_monotone(
        family(noise=0.0, shift=4.0, prefix="m"), higher_is_better=False, mode="envelope"
    )  # compute 10^11.5..10^16
    below_e = speedup_at(dense, moe, E_TRUE * 0.99)
    assert below_e.speedup is None and below_e.extrapolated and "irreducible" in below_e.note
    # A loss the MoE reached at 1e15 FLOPs: dense needs 4e15, past its largest run.
    far = speedup_at(dense, moe, float(true_loss(4e15)))
    assert far.extrapolated and "dense compute range" in far.note
    assert far.speedup == pytest.approx(4.0, rel=1e-3)  # still computed, but flagged
    near = speedup_at(dense, moe, float(true_loss(4e12)))
    assert not near.extrapolated and near.note == "" and near.speedup == pytest.approx(4, rel=1e-3)
    by_compute = speedup_at_compute(dense, moe, 1e13)
    assert by_compute.c_dense == pytest.approx(1e13, rel=1e-6)
    assert by_compute.speedup == pytest.approx(4.0, rel=1e-3) and not by_compute.extrapolated
    unmeasured = speedup_at(dense, moe, 10.0)  # worse than any MoE evaluation
    assert unmeasured.speedup is None and unmeasured.extrapolated and "MoE" in unmeasured.note


def test_isotonic_fit_pools_violators():
    pts = [EvalPoint("a", 1.0, 0.30), EvalPoint("a", 2.0, 0.20), EvalPoint("b", 3.0, 0.40)]
    fit = fit_monotone(pts, higher_is_better=True)
    assert fit.knots_value == pytest.approx([0.25, 0.40])
    assert fit.knots_compute == pytest.approx([math.sqrt(2.0), 3.0])
    at_2 = 0.25 + 0.15 * (math.log(2.0) - math.log(math.sqrt(2.0))) / math.log(3.0 / math.sqrt(2))
    assert fit.predict(2.0) == pytest.approx(at_2)
    assert fit.predict(1.0) == pytest.approx(0.25)  # flat to the end of the measured range
    assert fit.residuals == pytest.approx([0.05, 0.20 - at_2, 0.0])
    assert fit.compute_at(0.325) == pytest.approx(math.exp((math.log(2) / 2 + math.log(3)) / 2))
    assert fit.compute_at(0.5) is None and fit.predict(10.0) is None


def test_accuracy_speedup_and_chance_interval():
    rng = np.random.default_rng(0)

    def acc_family(shift, prefix):
        pts = []
        for r, c_final in enumerate(np.geomspace(1e12, 1e16, 6)):
            for c in np.geomspace(c_final / 10, c_final, 5):
                acc = 0.25 + 0.05 * math.log10(c * shift / 1e11) + rng.normal(0, 0.001)
                pts.append(EvalPoint(f"{prefix}{r}", float(c), acc))
        return pts

    dense = fit_monotone(acc_family(1.0, "d"))
    moe = fit_monotone(acc_family(4.0, "m"))
    chance = chance_interval(0.25, 1000)
    assert chance == pytest.approx((0.25 - 0.02684, 0.25 + 0.02684), abs=1e-4)
    lo_q, hi_q = 0.25 + 0.05 * math.log10(4 * 10**1.5), 0.25 + 0.05 * 4.5
    speedups = [speedup_at(dense, moe, q, chance=chance) for q in np.linspace(lo_q, hi_q, 9)]
    values = [s.speedup for s in speedups if not s.extrapolated]
    assert len(values) >= 7 and np.median(values) == pytest.approx(4.0, rel=0.1)
    weak = speedup_at(dense, moe, 0.26, chance=chance)  # inside the chance interval
    assert weak.speedup is None and weak.note == "within the chance interval"
    assert mean_chance_interval([0.5, 0.25], [100, 300])[0] == pytest.approx(
        0.375 - 1.96 * math.sqrt(0.25 / 100 + 0.1875 / 300) / 2
    )


def test_user_errors():
    with pytest.raises(MoelabError, match="at least 3"):
        fit_power_law([EvalPoint("a", 1e12, 3.0), EvalPoint("a", 2e12, 2.9)])
    with pytest.raises(MoelabError, match="positive compute"):
        fit_power_law([EvalPoint("a", 0.0, 3.0)] * 3)
    with pytest.raises(MoelabError, match="envelope"):
        select_points([], "frontier")
    with pytest.raises(MoelabError, match="different kinds"):
        speedup_at(
            fit_monotone(family(noise=0.0)), fit_monotone(family(), higher_is_better=False), 3
        )


def test_flat_isotonic_curve_reaches_no_value_at_a_definite_compute():
    """A larger model scoring lower pools every point into one block: no speedup can invert
    that curve, and the note says why."""
    pts = [EvalPoint("a", 1e12, 0.53), EvalPoint("b", 4e12, 0.50)]
    flat = fit_monotone(pts, higher_is_better=True)
    assert flat.knots_value == pytest.approx([0.515]) and flat.compute_at(0.515) is None
    moe = fit_monotone([EvalPoint("m", 2e12, 0.515), EvalPoint("m2", 3e12, 0.52)])
    sp = speedup_at(flat, moe, 0.515)
    assert sp.speedup is None and "flat" in sp.note
    single = fit_monotone([EvalPoint("a", 1e12, 0.53)], higher_is_better=True)
    assert single.compute_at(0.53) == pytest.approx(
        1e12
    )  # one point is a measurement, not a flat curve
