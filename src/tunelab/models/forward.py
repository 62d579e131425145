"""Forward passes that compute only what a loss needs, on the batch layout they are given.

    logp, _, _ = layout_logprobs(model, batch)           # (K,) per target, batch: data/layout.Layout
    seq_logp = sequence_logprobs(model, batch)           # (S,) summed per continuation

The layout (packed or padded) was decided where the batch was made (data/layout.py); the forward here is
the same for both: the model runs the batch's ids, mask and positions, and logits are computed only at
the positions that predict a target (transformers' `logits_to_keep`), each read once per target it
predicts. Invariant: a packed and a padded layout of the same segments give the same log-probs within
1e-5 (tests/test_layout.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tunelab.data.layout import Layout
from tunelab.models.attention import attention_inputs
from tunelab.models.capability import prompt_learning, takes_4d_mask


def log_softmax(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature) over the last dim, in fp32 whatever the logits' dtype (bf16 under
    autocast). (`log_softmax(dtype=float32)` on bf16 logits would skip the fp32 copy, but ran 13% slower
    here on (336, 49152), forward and backward.)"""
    logits = logits.float()
    return torch.log_softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)


def entropy_of(logp_all: Tensor) -> Tensor:
    """(...,) the entropy of each distribution of (..., V) log-probs, without gradient (a statistic)."""
    with torch.no_grad():
        return -(logp_all.exp() * logp_all).sum(dim=-1)


def logprobs_of(
    logits: Tensor, targets: Tensor, temperature: float = 1.0, entropy: bool = False
) -> tuple[Tensor, Tensor | None]:
    """log softmax(logits / temperature) at `targets`: (...,) from (..., V) and (...,); in fp32.

    With `entropy`, also the entropy of each distribution, without gradient (a statistic: its (..., V)
    graph is not kept for backward)."""
    logp_all = log_softmax(logits, temperature)
    logp = logp_all.gather(-1, targets[..., None]).squeeze(-1)
    return logp, entropy_of(logp_all) if entropy else None


def _kept_logits(model, batch: Layout, hidden: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """Logits (N, V) at the positions that predict a target, each position once (a shared prompt's last
    predicts G targets), in position order; the row of (N, V) each target is predicted by (K,), in target
    order; with `hidden`, the final hidden state (K, H) at each target's position (a value head reads it)."""
    R, T = batch.input_ids.shape
    keep = torch.zeros(R * T, dtype=torch.bool, device=batch.input_ids.device)
    keep[batch.source] = True
    slot = torch.cumsum(keep.long(), 0) - 1  # flat position -> row of the kept logits
    logits, states = _forward(model, batch, keep.view(R, T), hidden)
    return logits, slot[batch.source], states[batch.source] if hidden else None


def next_token_logits(model, batch: Layout) -> tuple[Tensor, Tensor]:
    """Logits (K, V) predicting each target and the targets (K,), both in position order (not target
    order): for a loss summed over the targets (SFT, pre-training), the (K, V) logits then need no
    reordering. Every position must predict at most one target: segments without a shared prompt."""
    R, T = batch.input_ids.shape
    keep = torch.zeros(R * T, dtype=torch.bool, device=batch.input_ids.device)
    keep[batch.source] = True
    slot = torch.cumsum(keep.long(), 0) - 1  # flat position -> row of the kept logits
    targets = torch.empty_like(batch.target_ids)
    targets[slot[batch.source]] = batch.target_ids  # a permutation: one target per kept position
    logits, _ = _forward(model, batch, keep.view(R, T))
    if logits.shape[0] != targets.shape[0]:
        raise ValueError("a position predicts several targets (a shared prompt): use layout_logprobs")
    return logits, targets


def _forward(model, batch: Layout, keep: Tensor, hidden: bool = False) -> tuple[Tensor, Tensor | None]:
    """The model on `batch`, logits (N, V) only where `keep` (R, T) is set, in position order; with
    `hidden`, the final hidden state (R * T, H) at every position."""
    R, T = batch.input_ids.shape
    if batch.packed and not takes_4d_mask(model):  # the batch maker asked the same question
        raise ValueError("a packed layout needs sdpa or eager attention and no prompt / prefix tuning")
    is_prompt, n_virtual = prompt_learning(model)
    if is_prompt:  # virtual tokens in front: their positions are the model's own (padded layouts only)
        keep_2d = torch.cat([keep.new_zeros(R, n_virtual), keep], dim=1)
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep_2d)
    else:
        out = model(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            logits_to_keep=keep,
            output_hidden_states=hidden,
            **attention_inputs(model, batch),  # the mask; packed: views (models/attention.py)
        )
    states = out.hidden_states[-1].reshape(R * T, -1) if hidden else None
    return out.logits.reshape(-1, out.logits.shape[-1]), states


def layout_logprobs(
    model, batch: Layout, temperature: float = 1.0, value_head=None, entropy: bool = False
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Log-prob of every target token given its prefix, in target order: (K,); with `entropy`, the
    entropy of each target's distribution (K,) (no gradient), else None; and the value head's values
    (K,) when one is given (PPO), else None.

    Logits are divided by the sampling temperature, so these are the log-probs of the distribution the
    tokens were drawn from. Log-softmax runs once per kept position, not once per target."""
    logits, row, states = _kept_logits(model, batch, hidden=value_head is not None)
    logp_all = log_softmax(logits, temperature)  # (N, V) fp32
    logp = logp_all[row, batch.target_ids]  # (K,)
    ent = entropy_of(logp_all)[row] if entropy else None
    values = None
    if value_head is not None:
        values = value_head(states.to(value_head.weight.dtype)).squeeze(-1).float()
    return logp, ent, values


def sequence_logprobs(model, batch: Layout) -> Tensor:
    """Sum of the log-probs of each continuation's targets: (S,), in continuation order. For DPO."""
    logp, _, _ = layout_logprobs(model, batch)  # (K,)
    return torch.zeros(batch.n_seqs, device=logp.device).index_add(0, batch.target_seq, logp)
