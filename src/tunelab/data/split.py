"""The held-out split every stage takes when data.eval is unset (and the reward-model gate re-takes)."""

from __future__ import annotations

import random


def split_holdout(rows: list, share: float, seed: int) -> tuple[list, list]:
    """(train, held-out): a seeded random `share` of rows held out."""
    if share <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(share * len(rows)))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
