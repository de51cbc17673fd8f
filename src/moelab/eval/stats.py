"""Summary statistics for accuracies: mean/std across seeds, bootstrap intervals over items."""

from __future__ import annotations

import numpy as np


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std


def bootstrap_ci(
    per_item: np.ndarray, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``per_item`` (items resampled with
    replacement). ``per_item`` holds each item's score averaged over seeds."""
    per_item = np.asarray(per_item, dtype=np.float64)
    if per_item.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, per_item.size, size=(n_resamples, per_item.size))
    means = per_item[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
