"""Speedup bounds measured straight from the evaluation points, without any fit.
Method: docs/fit.md#measured-bounds-moelabstudyanalysisbounds
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from moelab.study.analysis.fit import EvalPoint, select_points

LOWER, UPPER = "lower", "upper"


@dataclass(frozen=True)
class MeasuredBound:
    """``speedup(quality) >= ratio`` (``kind`` "lower") or ``<= ratio`` ("upper"): for a lower
    bound the MoE point reached ``quality`` and the dense point is the last eligible one before
    any dense point reached it; for an upper bound the reverse."""

    kind: str
    ratio: float
    quality: float
    moe_run: str
    moe_compute: float
    moe_value: float
    dense_run: str
    dense_compute: float
    dense_value: float

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "ratio": self.ratio,
            "quality": self.quality,
            "moe": {"run": self.moe_run, "compute": self.moe_compute, "value": self.moe_value},
            "dense": {
                "run": self.dense_run,
                "compute": self.dense_compute,
                "value": self.dense_value,
            },
        }


def eligible(points: Sequence[EvalPoint], mode: str) -> list[EvalPoint]:
    """The points that may show "not reached by this compute", whatever the fit ``mode``: the
    annealed points, else each run's final point (docs/fit.md, "Measured bounds")."""
    annealed = [p for p in points if p.annealed]
    if annealed:
        return annealed
    return select_points(points, "final")


def _better(a: float, b: float, higher_is_better: bool) -> bool:
    """``a`` at least as good as ``b``."""
    return a >= b if higher_is_better else a <= b


def _first_reach(points: Sequence[EvalPoint], t: float, hib: bool) -> EvalPoint | None:
    """The lowest-compute point that reached ``t``."""
    reached = [p for p in points if _better(p.value, t, hib)]
    return min(reached, key=lambda p: p.compute) if reached else None


def _last_short(
    points: Sequence[EvalPoint], candidates: Sequence[EvalPoint], t: float, hib: bool
) -> EvalPoint | None:
    """The highest-compute candidate such that no point at or below its compute reached ``t``."""
    first = _first_reach(points, t, hib)
    limit = first.compute if first is not None else float("inf")
    short = [p for p in candidates if p.compute < limit and not _better(p.value, t, hib)]
    return max(short, key=lambda p: p.compute) if short else None


def bounds_at(
    dense: Sequence[EvalPoint],
    moe: Sequence[EvalPoint],
    quality: float,
    *,
    mode: str = "envelope",
    higher_is_better: bool = False,
) -> tuple[MeasuredBound | None, MeasuredBound | None]:
    """(lower, upper) bound on the speedup at ``quality`` from every point of each family
    (``None`` where the points show none)."""
    hib = higher_is_better
    lower = upper = None
    moe_reach = _first_reach(moe, quality, hib)
    dense_short = _last_short(dense, eligible(dense, mode), quality, hib)
    if moe_reach is not None and dense_short is not None:
        lower = _bound(LOWER, quality, moe_reach, dense_short)
    dense_reach = _first_reach(dense, quality, hib)
    moe_short = _last_short(moe, eligible(moe, mode), quality, hib)
    if dense_reach is not None and moe_short is not None:
        upper = _bound(UPPER, quality, moe_short, dense_reach)
    return lower, upper


def _bound(kind: str, t: float, m: EvalPoint, d: EvalPoint) -> MeasuredBound:
    return MeasuredBound(
        kind, d.compute / m.compute, t, m.run, m.compute, m.value, d.run, d.compute, d.value
    )


def measured_bounds(
    dense: Sequence[EvalPoint],
    moe: Sequence[EvalPoint],
    *,
    mode: str = "envelope",
    higher_is_better: bool = False,
    min_run_fraction: float = 0.0,
) -> list[MeasuredBound]:
    """The lower bound at each quality the MoE frontier measured and the upper bound at each
    quality the dense frontier measured (frontiers as the fits select them), where the points
    show one; sorted by quality, worst first."""
    hib = higher_is_better
    sel = "envelope" if mode in ("all", "envelope") else mode
    out: list[MeasuredBound] = []
    frac = min_run_fraction
    for side, family in enumerate((moe, dense)):  # lower bounds at MoE qualities, then upper
        for p in select_points(family, sel, higher_is_better=hib, min_run_fraction=frac):
            bound = bounds_at(dense, moe, p.value, mode=mode, higher_is_better=hib)[side]
            if bound is not None:
                out.append(bound)
    out.sort(key=lambda b: (b.quality if hib else -b.quality, b.kind))
    return out


def strongest(bounds: Sequence[MeasuredBound]) -> tuple[MeasuredBound | None, ...]:
    """(the largest lower bound, the smallest upper bound)."""
    lows = [b for b in bounds if b.kind == LOWER]
    ups = [b for b in bounds if b.kind == UPPER]
    return (
        max(lows, key=lambda b: b.ratio) if lows else None,
        min(ups, key=lambda b: b.ratio) if ups else None,
    )
