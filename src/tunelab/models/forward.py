"""Forward passes that compute only what a loss needs, on the batch layout they are given.

    logp, entropy, _ = layout_logprobs(model, batch)     # (K,) per target, batch: data/layout.Layout
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

from tunelab.data.batch import LMBatch
from tunelab.data.layout import Layout
from tunelab.data.render import IGNORE
from tunelab.models.capability import prompt_learning, takes_4d_mask


def logprobs_of(
    logits: Tensor, targets: Tensor, temperature: float = 1.0, entropy: bool = False
) -> tuple[Tensor, Tensor | None]:
    """log softmax(logits / temperature) at `targets`: (...,) from (..., V) and (...,); in fp32.

    With `entropy`, also the entropy of each distribution, without gradient (a statistic: its (..., V)
    graph is not kept for backward)."""
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, targets[..., None]).squeeze(-1)
    ent = None
    if entropy:
        with torch.no_grad():
            ent = -(logp_all.exp() * logp_all).sum(dim=-1)
    return logp, ent


def next_token_logits(model, batch: LMBatch) -> tuple[Tensor, Tensor]:
    """Logits at every labelled next-token position and their targets: (K, V), (K,)."""
    predicts = torch.zeros_like(batch.labels, dtype=torch.bool)  # (B, T) position t predicts token t+1
    predicts[:, :-1] = batch.labels[:, 1:] != IGNORE
    targets = batch.labels[:, 1:][predicts[:, :-1]]  # (K,)
    is_prompt, n_virtual = prompt_learning(model)
    if is_prompt:
        if batch.attention_mask.dim() != 2:
            raise ValueError("prompt and prefix tuning cannot use packed sequences (data.pack=false)")
        keep = torch.cat([predicts.new_zeros(predicts.shape[0], n_virtual), predicts], dim=1)
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep)
    else:
        out = model(**batch.model_inputs(), logits_to_keep=predicts)
    return out.logits.reshape(-1, out.logits.shape[-1]), targets


def layout_logits(model, batch: Layout, hidden: bool = False) -> tuple[Tensor, Tensor | None]:
    """Logits (K, V) predicting each target of `batch`, in target order; with `hidden`, the final hidden
    state (K, H) at the same positions (a value head reads it)."""
    R, T = batch.input_ids.shape
    keep = torch.zeros(R * T, dtype=torch.bool, device=batch.input_ids.device)
    keep[batch.source] = True  # a position that predicts G targets (a shared prompt's last) is kept once
    slot = torch.cumsum(keep.long(), 0) - 1  # flat position -> row of the kept logits
    if batch.packed and not takes_4d_mask(model):  # the batch maker asked the same question
        raise ValueError("a packed layout needs sdpa or eager attention and no prompt / prefix tuning")
    is_prompt, n_virtual = prompt_learning(model)
    if is_prompt:  # virtual tokens in front: their positions are the model's own (padded layouts only)
        keep_2d = torch.cat([keep.new_zeros(R, n_virtual), keep.view(R, T)], dim=1)
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep_2d)
    else:
        out = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            logits_to_keep=keep.view(R, T),
            output_hidden_states=hidden,
        )
    logits = out.logits.reshape(-1, out.logits.shape[-1])[slot[batch.source]]  # (K, V)
    states = out.hidden_states[-1].reshape(R * T, -1)[batch.source] if hidden else None  # (K, H)
    return logits, states


def layout_logprobs(
    model, batch: Layout, temperature: float = 1.0, value_head=None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Log-prob and entropy of every target token given its prefix, in target order: (K,), (K,), and the
    value head's values (K,) when one is given (PPO), else None.

    Logits are divided by the sampling temperature, so these are the log-probs of the distribution the
    tokens were drawn from. The entropy carries no gradient."""
    logits, states = layout_logits(model, batch, hidden=value_head is not None)
    logp, entropy = logprobs_of(logits, batch.target_ids, temperature, entropy=True)
    values = None
    if value_head is not None:
        values = value_head(states.to(value_head.weight.dtype)).squeeze(-1).float()
    return logp, entropy, values


def sequence_logprobs(model, batch: Layout) -> Tensor:
    """Sum of the log-probs of each continuation's targets: (S,), in continuation order. For DPO."""
    logits, _ = layout_logits(model, batch)
    logp, _ = logprobs_of(logits, batch.target_ids)  # (K,)
    return torch.zeros(batch.n_seqs, device=logp.device).index_add(0, batch.target_seq, logp)
