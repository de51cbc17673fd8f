"""Which runs a bootstrap resample draws: whole runs, stratified by preset, each preset shifted by
a seed offset drawn from the replicate seeds' pooled spread (``SeedNoise``); without strata, runs
drawn with replacement. Method: docs/fit.md#bootstrap-intervals-on-every-speedup
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from moelab.study.analysis.points import EvalPoint


@dataclass(frozen=True)
class SeedNoise:
    """Pooled seed-to-seed spread: ``ss`` the sum of squared run offsets from their preset's
    mean (transformed units), ``df`` its degrees of freedom, ``runs`` the replicate runs."""

    ss: float = 0.0
    df: int = 0
    runs: int = 0

    def __add__(self, other: SeedNoise) -> SeedNoise:
        return SeedNoise(self.ss + other.ss, self.df + other.df, self.runs + other.runs)

    @property
    def sd(self) -> float:
        """The pooled estimate of one run's offset sd (nan without replicates)."""
        return math.sqrt(self.ss / self.df) if self.df else math.nan

    def draw_sd(self, rng: np.random.Generator) -> float:
        """One draw of sd from its posterior given the pool (flat prior on log sd):
        sd**2 = ss / chi2(df)."""
        if not self.df:
            return 0.0
        return math.sqrt(self.ss / rng.chisquare(self.df))

    def sd_interval(self, ci: float = 0.95) -> tuple[float, float]:
        """The central ``ci`` range of that posterior (how uncertain the spread itself is)."""
        return self.quantile_sd((1 - ci) / 2), self.quantile_sd((1 + ci) / 2)

    def quantile_sd(self, q: float) -> float:
        """The ``q`` quantile of that posterior (for the report: how uncertain the spread is)."""
        from scipy.stats import chi2

        return math.sqrt(self.ss / chi2.ppf(1 - q, self.df)) if self.df else math.nan


@dataclass
class RunResampler:
    """Draws resamples of whole runs. ``strata``: stratum -> its runs (a preset's seeds);
    ``noise``: the pooled seed spread (a comparison pools both families' into both);
    ``log_values``: offsets act on log(value) (losses) rather than on the value;
    ``stratified``: False for one stratum holding every run (plain bootstrap over runs)."""

    strata: dict[str, list[str]]
    points: dict[str, list[EvalPoint]]  # run -> its points
    noise: SeedNoise = field(default_factory=SeedNoise)
    log_values: bool = True
    stratified: bool = True

    @classmethod
    def build(
        cls,
        points: Sequence[EvalPoint],
        stratum_of: Mapping[str, str] | None = None,
        *,
        log_values: bool = True,
    ) -> RunResampler:
        """``stratum_of``: run -> stratum (its preset); a run not in it is its own stratum.
        ``None``: one stratum holding every run (plain bootstrap over runs)."""
        by_run: dict[str, list[EvalPoint]] = {}
        for p in points:
            by_run.setdefault(p.run, []).append(p)
        strata: dict[str, list[str]] = {}
        for run in sorted(by_run):
            key = "" if stratum_of is None else stratum_of.get(run, f"run:{run}")
            strata.setdefault(key, []).append(run)
        rs = cls(strata, by_run, log_values=log_values, stratified=stratum_of is not None)
        rs.noise = rs._pooled_noise()
        return rs

    @property
    def replicated(self) -> list[str]:
        return [s for s, runs in self.strata.items() if len(runs) >= 2]

    def usable(self) -> bool:
        """Whether a resample can vary at all: some stratum has replicate runs."""
        return bool(self.replicated)

    def why_not(self) -> str:
        """Why no interval (empty when there is one)."""
        if self.usable():
            return ""
        return (
            "no interval: every preset has a single run, so there is no seed-to-seed spread to "
            "resample; add replicate seeds (grid `seed: [1, 2]`), at least for the smallest sizes"
        )

    def _transform(self, v: float) -> float:
        return math.log(v) if self.log_values else v

    def run_offsets(self) -> list[float]:
        """Each replicated run's mean deviation from its preset's mean, over the computes all of
        that preset's runs measured (transformed units)."""
        out: list[float] = []
        for runs in self.strata.values():
            if len(runs) < 2:
                continue
            by_c = [
                {_key(p.compute): self._transform(p.value) for p in self.points[r]} for r in runs
            ]
            common = set.intersection(*(set(d) for d in by_c))
            if not common:  # no shared computes: each run's last point
                by_c = [{0: self._transform(self.points[r][-1].value)} for r in runs]
                common = {0}
            keys = sorted(common)
            vals = np.array([[d[c] for c in keys] for d in by_c])  # (k runs, computes)
            out.extend(float(x) for x in (vals - vals.mean(axis=0)).mean(axis=1))
        return out

    def _pooled_noise(self) -> SeedNoise:
        if not self.stratified:
            return SeedNoise()
        offsets = self.run_offsets()
        df = sum(len(runs) - 1 for runs in self.strata.values() if len(runs) >= 2)
        return SeedNoise(float(sum(o * o for o in offsets)), df, len(offsets))

    def draw(self, rng: np.random.Generator, sd: float | None = None) -> list[EvalPoint]:
        """One resample's points; ``sd``: its seed spread (default: drawn from ``noise``).
        Unstratified, a run drawn twice appears under two names."""
        out: list[EvalPoint] = []
        if not self.stratified:
            for runs in self.strata.values():
                for j, i in enumerate(rng.integers(0, len(runs), size=len(runs))):
                    out += self._shifted(runs[i], f"{runs[i]}#{j}", 0.0)
            return out
        if sd is None:
            sd = self.noise.draw_sd(rng)
        for runs in self.strata.values():
            off = float(rng.normal(0.0, sd / math.sqrt(len(runs)))) if sd > 0 else 0.0
            for run in runs:
                out += self._shifted(run, f"{run}#0", off)
        return out

    def _shifted(self, run: str, name: str, off: float) -> list[EvalPoint]:
        if self.log_values:
            return [
                EvalPoint(name, p.compute, p.value * math.exp(off), p.annealed)
                for p in self.points[run]
            ]
        return [EvalPoint(name, p.compute, p.value + off, p.annealed) for p in self.points[run]]


def _key(compute: float) -> float:
    """Computes of two seeds of one preset agree to rounding: match them at 9 digits."""
    return float(f"{compute:.9g}")


def percentile_interval(
    samples: Sequence[float], n_resamples: int, ci: float = 0.95, min_share: float = 0.8
) -> tuple[float, float] | None:
    """Percentile interval of ``samples``; ``None`` when fewer than ``min_share`` of the
    ``n_resamples`` resamples gave a value (the rest would bias it)."""
    if n_resamples <= 0 or len(samples) < max(2, min_share * n_resamples):
        return None
    lo, hi = np.percentile(np.asarray(samples, dtype=float), [50 * (1 - ci), 50 * (1 + ci)])
    return float(lo), float(hi)
