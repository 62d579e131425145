"""Next-token loss."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def lm_loss_sum(logits: Tensor, targets: Tensor) -> Tensor:
    """Sum over positions of -log p(target): logits (K, V), targets (K,) -> scalar.

    A sum, not a mean: the training loop divides by the number of target tokens in the whole
    global batch, so that how the batch is split into micro-batches does not change the gradient.
    """
    return F.cross_entropy(logits.float(), targets, reduction="sum")
