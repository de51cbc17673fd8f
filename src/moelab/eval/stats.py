"""Summary statistics for accuracies and scores: mean/std across seeds, bootstrap intervals over
items, and the continuous score (probability given to the correct candidate)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_CHUNK_ELEMENTS = 4_000_000  # resampled indices held at once (32 MB of int64)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std


def bootstrap_ci(
    per_item: np.ndarray, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``per_item`` (items resampled with
    replacement). ``per_item`` holds each item's score averaged over seeds. Resamples are drawn
    in chunks (the same draws as all at once) so 67,000 BLiMP pairs need no 0.5 GB array."""
    per_item = np.asarray(per_item, dtype=np.float64)
    if per_item.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // per_item.size)
    means = []
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        idx = rng.integers(0, per_item.size, size=(rows, per_item.size))
        means.append(per_item[idx].mean(axis=1))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.concatenate(means), [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def correct_probability(scores: np.ndarray, correct: Sequence[int]) -> float:
    """The continuous score of one item: the candidates' scores softmax-normalised over the
    candidates, summed over the correct ones. With ``sum`` scores this is
    p(correct) / sum_j p(candidate j), the probability the model gives the right answer when
    it must pick one of the candidates; 1 / n for a model indifferent between them."""
    s = np.asarray(scores, dtype=np.float64)
    p = np.exp(s - s.max())
    return float(p[list(correct)].sum() / p.sum())
