"""Statistics on differences between rungs scored on the same held-out rows.

    diff, low, high = paired_bootstrap(lora_scores, full_scores)   # mean(lora - full), 95% interval
    resolved(low, high)                                            # False when the interval holds 0
    rows_to_resolve(diff, low, high, n=32)                         # held-out rows that would resolve it

Paired: each resample draws the same row indices for both rungs, so the variation that the rows
share (an easy row is easy for both) cancels, and the interval is that of the difference itself.
"""

from __future__ import annotations

import math

import numpy as np

from tunelab.eval.stats import bootstrap_ci


def paired_bootstrap(
    a: list[float], b: list[float], *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean(a - b), low, high): the percentile bootstrap interval of the mean paired difference."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same rows: {len(a)} vs {len(b)}")
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)  # (n,)
    return bootstrap_ci(diffs, resamples=resamples, level=level, seed=seed)  # row indices drawn once per pair


def resolved(low: float, high: float) -> bool:
    """The data tells the two apart: the interval of the difference excludes 0."""
    return low > 0 or high < 0


def rows_to_resolve(diff: float, low: float, high: float, n: int) -> int | None:
    """Held-out rows that would shrink the interval's half-width below |diff|, if the per-row spread of
    the differences stays what it is (the half-width falls as 1/sqrt(rows)); None when diff is 0."""
    half = (high - low) / 2
    if diff == 0 or not math.isfinite(half):
        return None
    if half == 0:
        return n
    return max(n, math.ceil(n * (half / abs(diff)) ** 2))


def spread(values: list[float]) -> tuple[float, float] | None:
    """(min, max) over seeds; None for a single seed."""
    return (min(values), max(values)) if len(values) > 1 else None
