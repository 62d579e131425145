"""Uncertainty of a mean score: the percentile bootstrap.

mean, lo, hi = bootstrap_ci([1, 0, 1, 1])      # 95% interval of the mean, fixed seed
"""

from __future__ import annotations

import numpy as np


def bootstrap_ci(
    values: list[float] | np.ndarray, *, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean and the percentile bootstrap interval of the mean."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)  # (resamples,)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(data.mean()), float(low), float(high)
