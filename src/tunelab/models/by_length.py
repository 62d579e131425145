"""A padded micro-batch run as a few forwards of rows of similar length, results back in row order.

    scores = by_length(model, lengths, lambda rows: rewards_of(batch, rows))     # (B,)

Reward models and DPO pad a micro-batch of 2 x 8 answers to its longest; with answers of 60-300 tokens
a third of the positions are padding, which costs as much as real tokens. Each group (data/batch.py
`length_groups`) is padded only to its own longest. The loss sums rows, so it is the single forward's up
to float rounding; all forwards come before the one backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tunelab.data.batch import length_groups
from tunelab.models.forward import plain_weights


def by_length(
    model,
    lengths: list[int],
    run: Callable[[list[int] | None], Tensor],
    rows_of: Callable[[int], list[int]] = lambda unit: [unit],
) -> Tensor:
    """`run(rows)` -> one value per row, for each group of units of similar `lengths`; (rows,) in row order.

    A unit is a row, or rows that must share a forward (a DPO pair: `rows_of`). `run(None)` means the
    whole batch as it is, what runs when one group is best or splitting is not allowed.
    """
    groups = length_groups(lengths) if plain_weights(model) else []
    if len(groups) <= 1:
        return run(None)
    rows = [[r for unit in group for r in rows_of(unit)] for group in groups]
    values = torch.cat([run(group_rows) for group_rows in rows])  # (rows,) in group order
    order = torch.tensor([r for group_rows in rows for r in group_rows], device=values.device)
    return values[torch.argsort(order)]
