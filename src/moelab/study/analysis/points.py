"""One evaluation of a run, the unit every fit, bound and bootstrap reads (a module of its own
below fit.py and bootstrap.py, which both use it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalPoint:
    """One evaluation: ``run`` (the unit the bootstrap resamples), training FLOPs so far, the
    value (a loss, or an accuracy in [0, 1]), and whether the learning rate had decayed to its
    floor (``annealed``: docs/fit.md#loss-a-power-law-on-the-compute-efficient-frontier)."""

    run: str
    compute: float
    value: float
    annealed: bool = False
