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


def dpo_sigmoid_loss(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float
) -> Tensor:
    """DPO: sum over pairs of -log sigmoid(beta * [(pi_c - ref_c) - (pi_r - ref_r)]); inputs are sequence log-probs."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).sum()


def ipo_loss(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float
) -> Tensor:
    """IPO: sum over pairs of (margin - 1 / (2 beta))^2, which does not push the margin to infinity."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return ((margin - 1 / (2 * beta)) ** 2).sum()


DPO_LOSSES = {"sigmoid": dpo_sigmoid_loss, "ipo": ipo_loss}
