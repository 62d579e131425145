"""Forward passes that compute only what a loss needs.

The vocabulary head dominates the cost when prompts are long (49k x 576 for SmolLM2), so logits are
computed only at positions whose next token carries a label, via transformers' `logits_to_keep`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tunelab.data.batch import LMBatch
from tunelab.data.render import IGNORE
from tunelab.models.packed_groups import packable, packed_group_logits


def inner(model):
    """The model inside a DistributedDataParallel wrapper (forwards still go through the wrapper, which
    syncs gradients; attributes such as `disable_adapter` live on the model inside)."""
    return getattr(model, "module", model)


def prompt_learning(model) -> tuple[bool, int]:
    """(is the active adapter prompt/prefix tuning, virtual tokens prepended to the sequence)."""
    config = getattr(inner(model), "active_peft_config", None)
    if config is None or not getattr(config, "is_prompt_learning", False):
        return False, 0
    shifted = config.peft_type.value == "PROMPT_TUNING"  # prefix tuning feeds keys/values, not positions
    return True, config.num_virtual_tokens if shifted else 0


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


def token_logprobs(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    target_mask: Tensor,
    temperature: float = 1.0,
    value_head=None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Log-prob and entropy of every target token given its prefix, flat over targets: (K,), (K,), values (K,) | None.

    target_mask (B, T) marks the tokens to score (completion tokens); position ids follow the attention
    mask, so left-padded prompts give the positions generation used. Logits are divided by the sampling
    temperature, so these are the log-probs of the distribution the tokens were drawn from. The entropy
    carries no gradient.
    Rows that share their prompt (GRPO / RLOO groups) have the prompt computed once: see `shared_prompts`.
    """
    predicts = torch.zeros_like(target_mask, dtype=torch.bool)  # (B, T) position t scores token t+1
    predicts[:, :-1] = target_mask[:, 1:].bool()
    next_ids = torch.zeros_like(input_ids)
    next_ids[:, :-1] = input_ids[:, 1:]  # (B, T) the token each position predicts
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    is_prompt, n_virtual = prompt_learning(model)
    shared = (
        None
        if (is_prompt or value_head is not None)
        else shared_prompts(input_ids, attention_mask, target_mask)
    )
    order = None
    if shared is not None and packable(inner(model), attention_mask, target_mask, *shared[:2]):
        logits, targets = packed_group_logits(model, input_ids, attention_mask, predicts, next_ids, *shared)
    elif shared is not None and plain_weights(model):  # two forwards before one backward: no DDP / FSDP
        logits, targets, order = _shared_prompt_logits(
            model, input_ids, attention_mask, position_ids, predicts, next_ids, *shared
        )
    elif is_prompt:
        if value_head is not None:
            raise ValueError(
                "a value head (PPO) needs lora, dora or full fine-tuning, not prompt/prefix tuning"
            )
        keep = torch.cat([predicts.new_zeros(predicts.shape[0], n_virtual), predicts], dim=1)
        out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep)
        logits, targets = out.logits, next_ids[predicts]
    else:
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=predicts,
            output_hidden_states=value_head is not None,
        )
        logits, targets = out.logits, next_ids[predicts]
    logits = logits.reshape(-1, logits.shape[-1]).float() / temperature  # (K, V)
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(1, targets[:, None]).squeeze(1)  # (K,)
    with torch.no_grad():  # a statistic: no loss uses it, so its (K, V) graph is not kept for backward
        entropy = -(logp_all.exp() * logp_all).sum(dim=-1)  # (K,)
    if order is not None:  # back to row-major target order
        logp, entropy = logp[order], entropy[order]
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1][predicts]  # (K, H)
        values = value_head(hidden.to(value_head.weight.dtype)).squeeze(-1).float()
    return logp, entropy, values


def shared_prompts(input_ids: Tensor, attention_mask: Tensor, target_mask: Tensor):
    """(prompt length P, first row of each group, group of each row) when consecutive rows share the same
    prompt (every column before the first target) and there are at most half as many prompts as rows;
    else None. GRPO / RLOO sample G completions of each prompt, so the prompt's forward (and its backward)
    can be done once per group instead of G times. SmolLM2-135M + LoRA, 2 prompts x 8 completions of <= 32
    tokens (16 x 80 positions -> 2 x 48 + 16 x 32): the reference forward plus the training forward and
    backward took 7.6 s instead of 14.1 s (median of 3 interleaved pairs on the 2-core CPU). Packing the
    groups into one row (models/packed_groups.py) also drops the completions' padding: 5.1 s -> 3.6 s for
    the training forward and backward of such a batch.

    Not used (the plain path runs) for prompt/prefix tuning and for a value head; the shared-KV path (two
    forwards before one backward) not under DDP or with sharded (FSDP) weights. LoRA dropout, when on,
    draws one mask for a group's shared prompt rather than one per row.
    """
    columns = target_mask.bool().any(dim=0).nonzero()
    if len(columns) == 0 or int(columns[0]) < 1:
        return None
    P = int(columns[0])
    same = (input_ids[1:, :P] == input_ids[:-1, :P]).all(1) & (
        attention_mask[1:, :P] == attention_mask[:-1, :P]
    ).all(1)
    new_group = torch.cat([same.new_ones(1), ~same])  # (B,) row starts a group
    heads = new_group.nonzero().flatten()  # (n_groups,) first row of each group
    if 2 * len(heads) > input_ids.shape[0]:
        return None
    return P, heads, torch.cumsum(new_group.long(), dim=0) - 1  # group of each row (B,)


def plain_weights(model) -> bool:
    """Neither a DDP wrapper nor sharded (FSDP) weights: a step may then run several forwards before its
    backward (a DDP wrapper expects one forward per backward; under FSDP every rank must run the same ones)."""
    return inner(model) is model and not any(type(p).__name__ == "DTensor" for p in model.parameters())


def _cache_argument(model) -> str:
    """transformers renamed `past_key_values` to `cache` (5.2x; the old name warns until 5.40)."""
    import inspect

    base = inner(model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def _shared_prompt_logits(
    model, input_ids, attention_mask, position_ids, predicts, next_ids, P, heads, group_of_row
):
    """Logits at the `predicts` positions, the prompt run once per group and its KV cache shared.

    Returns (logits (K, V), targets (K,), order (K,)): logits come as [column P-1 of every row, then the
    completion positions row by row]; `order` maps them back to row-major order.
    """
    prompt = model(
        input_ids=input_ids[heads, :P],
        attention_mask=attention_mask[heads, :P],
        position_ids=position_ids[heads, :P],
        use_cache=True,
        logits_to_keep=1,
    )  # one row per group
    at_prompt_end = predicts[:, P - 1]  # (B,) rows whose first target follows the prompt's last column
    first = prompt.logits[:, -1][group_of_row[at_prompt_end]]  # (K1, V)
    name = _cache_argument(model)
    cache = getattr(prompt, name)
    cache.batch_select_indices(group_of_row)  # each row attends to its group's prompt keys and values
    later = predicts[:, P:]  # (B, T - P)
    rest = model(
        input_ids=input_ids[:, P:],
        attention_mask=attention_mask,
        position_ids=position_ids[:, P:],
        use_cache=True,
        logits_to_keep=later,
        **{name: cache},
    ).logits  # (K2, V)
    logits = torch.cat([first, rest.reshape(-1, first.shape[-1])])
    targets = torch.cat([next_ids[:, P - 1][at_prompt_end], next_ids[:, P:][later]])
    slot = torch.full(predicts.shape, -1, dtype=torch.long, device=predicts.device)
    k1 = int(at_prompt_end.sum())
    slot[:, P - 1][at_prompt_end] = torch.arange(k1, device=predicts.device)
    slot[:, P:][later] = torch.arange(k1, k1 + int(later.sum()), device=predicts.device)
    return logits, targets, slot[predicts]


def sequence_logprobs(model, batch: LMBatch) -> Tensor:
    """Sum of log-probs of the labelled tokens of each row: (B,). For DPO.

    Rows that share their prompt (a DPO pair's chosen and rejected, laid out by stages/dpo.py so that
    every prompt ends in the same column) run it once: see `_shared_prompt_logp`.
    """
    shared = None
    if batch.attention_mask.dim() == 2 and not prompt_learning(model)[0] and plain_weights(model):
        shared = shared_prompts(batch.input_ids, batch.attention_mask, batch.labels != IGNORE)
    if shared is not None:
        logp = _shared_prompt_logp(model, batch, shared)  # (K,)
    else:
        logits, targets = next_token_logits(model, batch)  # (K, V), (K,)
        logp = torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)  # (K,)
    rows = torch.arange(batch.labels.shape[0], device=logp.device)[:, None].expand_as(batch.labels[:, 1:])
    row_of_target = rows[batch.labels[:, 1:] != IGNORE]  # (K,)
    return torch.zeros(batch.labels.shape[0], device=logp.device).index_add(0, row_of_target, logp)


def _shared_prompt_logp(model, batch: LMBatch, shared) -> Tensor:
    """(K,) log-probs of the labelled tokens in row-major order, each group's prompt run once and its KV
    cache shared (`_shared_prompt_logits`). The benchmark's DPO pairs (prompts of 69 tokens, answers of
    122 on average) then run 313 positions a pair instead of 382, in the policy's forward and backward and
    in the reference's forward."""
    predicts = torch.zeros_like(batch.labels, dtype=torch.bool)  # (B, T) position t scores token t+1
    predicts[:, :-1] = batch.labels[:, 1:] != IGNORE
    next_ids = torch.zeros_like(batch.input_ids)
    next_ids[:, :-1] = batch.labels[:, 1:].clamp(min=0)  # (B, T) the token each position predicts
    logits, targets, order = _shared_prompt_logits(
        model, batch.input_ids, batch.attention_mask, batch.position_ids, predicts, next_ids, *shared
    )
    logp = torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
    return logp[order]
