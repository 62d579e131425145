"""GRPO / RLOO groups in one packed row: every prompt once, every completion once, no padding.

A rollout batch holds G completions of each prompt, left-padded prompts and right-padded completions:

    row 0:  [pad pad p0 p0 p0 | c c c c pad pad]
    row 1:  [pad pad p0 p0 p0 | c c pad pad pad pad]          (N rows x T columns)
    ...

Training on it as it is computes each prompt G times and every padding position. Here the same tokens
go through the model as one row

    [p0 p0 p0 | p1 p1 | c0 c0 c0 c0 | c1 c1 | ... ]               (1 x L, L = prompts + completions)

with an attention mask that lets a prompt token see its own prompt (causally) and a completion token
see its group's prompt and its own earlier tokens, and position ids that continue each prompt into each
of its completions. Every token then gets exactly the keys and positions it has in its own row, so the
log-probs are the plain forward's up to float rounding (tests/test_fast_paths.py). The last prompt token
predicts the first token of every completion of its group: its logits are computed once and read G times.

SmolLM2-135M, 2 prompts x 8 completions (~48 prompt tokens, completions of 20 tokens on average and 32
at most): 418 positions instead of 16 x 80 = 1280 (the plain forward) or 2 x 48 + 16 x 32 = 608 (the
prompt run once with its KV cache shared).

Needs an attention that takes an arbitrary 4D mask ("sdpa", "eager"); flash attention keeps the plain path.
"""

from __future__ import annotations

import torch
from torch import Tensor

MASKABLE = ("sdpa", "eager")
# the mask and the attention are dense over the packed row (L x L): past this many positions the attention
# over tokens that may not see each other costs more than the padding it saves (and the mask memory grows)
MAX_PACKED = 4096


def packable(model, attention_mask: Tensor, target_mask: Tensor, P: int, heads: Tensor) -> bool:
    """Whether the rows fit the layout: attention that takes a 4D mask, each row's tokens after column P
    contiguous from P (right padding only), targets only on attended tokens, and a packed row of at most
    MAX_PACKED positions."""
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if implementation not in MASKABLE:
        return False
    tail = attention_mask[:, P:].long()
    if int(tail.sum()) + P * len(heads) > MAX_PACKED:  # an upper bound on L
        return False
    right_padded = (tail[:, 1:] <= tail[:, :-1]).all()
    return bool(right_padded) and bool((attention_mask.bool() | ~target_mask.bool()).all())


def packed_group_logits(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    predicts: Tensor,
    next_ids: Tensor,
    P: int,
    heads: Tensor,
    group_of_row: Tensor,
) -> tuple[Tensor, Tensor]:
    """Logits at the `predicts` positions (B, T) in row-major order, and their targets: (K, V), (K,)."""
    device = input_ids.device
    keep_prompt = attention_mask[heads, :P].bool()  # (n_groups, P) prompt tokens without the left padding
    prompt_len = keep_prompt.sum(1)  # (n_groups,)
    comp_len = attention_mask[:, P:].sum(1)  # (B,) completion tokens of each row
    n_groups, B = len(heads), input_ids.shape[0]
    prompt_start = torch.cumsum(prompt_len, 0) - prompt_len  # (n_groups,) in the packed row
    comp_start = int(prompt_len.sum()) + torch.cumsum(comp_len, 0) - comp_len  # (B,)
    L = int(prompt_len.sum() + comp_len.sum())

    # the packed tokens, and for each: its group, its completion (-1 for prompt tokens), its position
    group_ids = torch.arange(n_groups, device=device)
    tokens = torch.cat([input_ids[heads, :P][keep_prompt], input_ids[:, P:][attention_mask[:, P:].bool()]])
    group = torch.cat([group_ids.repeat_interleave(prompt_len), group_of_row.repeat_interleave(comp_len)])
    completion = torch.cat(
        [
            torch.full((int(prompt_len.sum()),), -1, device=device),
            torch.arange(B, device=device).repeat_interleave(comp_len),
        ]
    )
    offset = torch.arange(L, device=device) - torch.cat(
        [prompt_start.repeat_interleave(prompt_len), comp_start.repeat_interleave(comp_len)]
    )  # index within its prompt or completion
    positions = offset + torch.cat(
        [
            torch.zeros(int(prompt_len.sum()), dtype=torch.long, device=device),
            prompt_len[group_of_row].repeat_interleave(comp_len),
        ]
    )  # completions continue their prompt's positions

    # (L, L): query rows, key columns
    causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    same_prompt = (completion[None, :] == -1) & (
        group[None, :] == group[:, None]
    )  # key is the query's prompt
    same_completion = (completion[None, :] >= 0) & (completion[None, :] == completion[:, None])
    allowed = causal & (same_prompt | same_completion)
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(L, L, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)

    # where each target is predicted from: the token before it in its row, which for a completion's first
    # token is its group's last prompt token
    rows, cols = predicts.nonzero(as_tuple=True)  # (K,) row-major: position (row, col) predicts col + 1
    from_prompt = cols < P
    source = torch.where(
        from_prompt,
        prompt_start[group_of_row[rows]] + prompt_len[group_of_row[rows]] - 1,
        comp_start[rows] + (cols - P),
    )  # (K,) packed position
    keep = torch.zeros(L, dtype=torch.bool, device=device)
    keep[source] = True
    slot = torch.cumsum(keep.long(), 0) - 1  # packed position -> row of the kept logits
    out = model(
        input_ids=tokens[None],
        attention_mask=mask[None, None],
        position_ids=positions[None],
        logits_to_keep=keep[None],
    )
    logits = out.logits.reshape(-1, out.logits.shape[-1])[slot[source]]  # (K, V)
    return logits, next_ids[rows, cols]
