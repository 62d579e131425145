"""Pairwise preference losses."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def bradley_terry_loss(
    r_chosen: Tensor,
    r_rejected: Tensor,
    margin: Tensor | None = None,
    weight: Tensor | None = None,
    center: float = 0.0,
) -> Tensor:
    """Sum over pairs of  weight * -log sigmoid(r_w - r_l - margin)  +  center * (r_w + r_l)^2.

    Bradley-Terry: P(chosen > rejected) = sigmoid(r_w - r_l). `margin` asks for a gap at least that
    large (labels with a strength); `weight` scales a pair's say (labels with a confidence); `center`
    keeps scores near zero, since BT fixes only differences. A sum: the loop divides by the pairs.
    """
    diff = r_chosen - r_rejected  # (B,)
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff)
    if weight is not None:
        loss = loss * weight
    if center:
        loss = loss + center * (r_chosen + r_rejected) ** 2
    return loss.sum()
