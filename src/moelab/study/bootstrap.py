"""Which runs a bootstrap resample draws: a run is the unit, stratified by preset.

Points of one run are correlated (one initialisation, one data order), so a resample draws whole
runs. The model sizes are design points chosen by the grid, not samples from a population of
sizes: a resample keeps every preset and draws, with replacement, as many of that preset's runs
(its replicate seeds) as it has. Resampling over all runs instead would drop a size from some
resamples and move the measured compute range with it, mixing the grid's design into what should
be seed-to-seed noise.

A preset with one run has no spread of its own to resample. When other presets of the comparison
have replicate seeds, their seed-to-seed spread stands in: each such run is shifted by an offset
drawn from the replicated presets' pooled run offsets (in log loss for losses, in value for
bounded scores), assuming a seed moves a run's whole curve by about the same amount at every size.
With no replicated preset at all there is no noise estimate and no interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from moelab.study.fit import EvalPoint


@dataclass
class RunResampler:
    """Draws resamples of whole runs. ``strata``: stratum -> its runs (a preset's seeds);
    ``offsets``: pooled per-run offsets from replicated strata (transformed units);
    ``log_values``: offsets act on log(value) (losses) rather than on the value."""

    strata: dict[str, list[str]]
    points: dict[str, list[EvalPoint]]  # run -> its points
    offsets: list[float] = field(default_factory=list)
    log_values: bool = True

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
        rs = cls(strata, by_run, log_values=log_values)
        rs.offsets = rs._pooled_offsets()
        return rs

    @property
    def replicated(self) -> list[str]:
        return [s for s, runs in self.strata.items() if len(runs) >= 2]

    @property
    def singletons(self) -> list[str]:
        return [s for s, runs in self.strata.items() if len(runs) == 1]

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

    def scheme(self) -> str:
        if not self.usable():
            return "none"
        if self.singletons:
            return "stratified by preset; single-run presets shifted by a pooled seed offset"
        return "stratified by preset"

    def _transform(self, v: float) -> float:
        return math.log(v) if self.log_values else v

    def _pooled_offsets(self) -> list[float]:
        """Each replicated run's mean deviation from its preset's mean, over the computes all of
        that preset's runs measured, scaled by sqrt(k / (k - 1)) so the pool's spread estimates a
        single run's offset (k runs in the preset)."""
        out: list[float] = []
        for runs in self.strata.values():
            k = len(runs)
            if k < 2:
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
            dev = (vals - vals.mean(axis=0)).mean(axis=1) * math.sqrt(k / (k - 1))
            out.extend(float(x) for x in dev)
        return out

    def draw(self, rng: np.random.Generator) -> list[EvalPoint]:
        """One resample's points; a run drawn twice appears under two names."""
        out: list[EvalPoint] = []
        for runs in self.strata.values():
            if len(runs) >= 2:
                chosen = [(runs[i], 0.0) for i in rng.integers(0, len(runs), size=len(runs))]
            elif self.offsets:
                chosen = [(runs[0], self.offsets[int(rng.integers(0, len(self.offsets)))])]
            else:
                chosen = [(runs[0], 0.0)]
            for j, (run, off) in enumerate(chosen):
                name = f"{run}#{j}"
                for p in self.points[run]:
                    v = p.value * math.exp(off) if self.log_values else p.value + off
                    out.append(EvalPoint(name, p.compute, v, p.annealed))
        return out


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
