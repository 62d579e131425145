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


ROW_CHUNK_ELEMENTS = 1 << 21  # fp32 elements of logits a chunk of rows converts at once (8 MB)


class _TargetLogprobs(torch.autograd.Function):
    """log softmax(logits / t) at K (row, target) pairs of (N, V) logits, in fp32, with the entropy of each
    row's distribution (a statistic, no gradient), computed a chunk of rows at a time.

    The plain way converts the logits to fp32 and keeps their (N, V) log-softmax for backward, which then
    makes two more (N, V) fp32 tensors: on SmolLM2's 49k vocabulary, ~330 kept positions are 65 MB each,
    written, read and page-faulted on every step. Here only the logits themselves (already there, bf16
    under autocast) are kept with one log-sum-exp per row, and backward writes the logits' gradient
    directly, chunk by chunk: d logp_k / d z[n, v] = [n = row_k] ([v = target_k] - p[n, v]) / t, the
    target's 1 added in fp32 before the cast, so a confident token's 1 - p keeps its digits. Equal to
    `log_softmax(logits.float() / t)[row, target]` within fp32 rounding, forward and backward
    (tests/test_forward.py)."""

    @staticmethod
    def forward(ctx, logits: Tensor, row: Tensor, target: Tensor, temperature: float, with_entropy: bool):
        N, V = logits.shape
        lse = torch.empty(N, dtype=torch.float32, device=logits.device)  # (N,)
        entropy = torch.empty(N, dtype=torch.float32, device=logits.device) if with_entropy else None
        for s in range(0, N, _chunk_rows(V)):
            z = _scaled(logits[s : s + _chunk_rows(V)], temperature)  # (c, V) fp32
            lse[s : s + len(z)] = torch.logsumexp(z, dim=-1)
            if with_entropy:  # H = lse - sum p z
                p = (z - lse[s : s + len(z), None]).exp_()
                entropy[s : s + len(z)] = lse[s : s + len(z)] - (p * z).sum(dim=-1)
        logp = _scaled(logits[row, target], temperature) - lse[row]  # (K,)
        ctx.save_for_backward(logits, row, target, lse)
        ctx.temperature = temperature
        entropy = entropy[row] if with_entropy else lse.new_zeros(0)  # (K,): a statistic
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_entropy):
        logits, row, target, lse = ctx.saved_tensors
        t = ctx.temperature
        N, V = logits.shape
        grad = grad.float()
        per_row = torch.zeros(N, dtype=torch.float32, device=grad.device).index_add_(0, row, grad)  # (N,)
        out = torch.empty_like(logits)
        for s in range(0, N, _chunk_rows(V)):
            e = min(N, s + _chunk_rows(V))
            g = (_scaled(logits[s:e], t) - lse[s:e, None]).exp_().mul_(-per_row[s:e, None])  # -g p
            mine = (row >= s) & (row < e)
            g.index_put_((row[mine] - s, target[mine]), grad[mine], accumulate=True)  # + g at the target
            out[s:e] = g.div_(t) if t != 1.0 else g
        return out, None, None, None, None


def _chunk_rows(V: int) -> int:
    return max(1, ROW_CHUNK_ELEMENTS // V)


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    z = logits.float()
    return z / temperature if temperature != 1.0 else z


def target_logprobs(
    logits: Tensor, row: Tensor, target: Tensor, temperature: float = 1.0, entropy: bool = False
) -> tuple[Tensor, Tensor | None]:
    """(K,) log softmax(logits / temperature)[row, target] in fp32 from (N, V) logits, and with `entropy`
    the entropy (K,) of each target's distribution (no gradient), else None (`_TargetLogprobs`)."""
    logp, ent = _TargetLogprobs.apply(logits, row, target, temperature, entropy)
    return logp, ent if entropy else None


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
    tokens were drawn from. The log-sum-exp runs once per kept position, not once per target."""
    logits, row, states = _kept_logits(model, batch, hidden=value_head is not None)  # (N, V), (K,)
    logp, ent = target_logprobs(logits, row, batch.target_ids, temperature, entropy)  # (K,) fp32
    values = None
    if value_head is not None:
        values = value_head(states.to(value_head.weight.dtype)).squeeze(-1).float()
    return logp, ent, values


def sequence_logprobs(model, batch: Layout) -> Tensor:
    """Sum of the log-probs of each continuation's targets: (S,), in continuation order. For DPO."""
    logp, _, _ = layout_logprobs(model, batch)  # (K,)
    return torch.zeros(batch.n_seqs, device=logp.device).index_add(0, batch.target_seq, logp)
