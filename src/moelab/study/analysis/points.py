"""One evaluation of a run, the unit every fit, bound and bootstrap reads (a module of its own
below fit.py and bootstrap.py, which both use it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalPoint:
    """One evaluation: ``run`` (the unit the bootstrap resamples), training FLOPs so far, and the
    measured value (a loss, or an accuracy in [0, 1]). ``annealed``: the learning rate had
    decayed to the schedule's floor when it was measured (a cooldown branch's end, or the final
    point of a decaying schedule), so the point is what a run trained to exactly this compute
    would reach; mid-run points of a stable or slowly decaying phase are not."""

    run: str
    compute: float
    value: float
    annealed: bool = False
