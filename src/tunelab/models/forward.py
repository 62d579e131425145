"""Forward passes that compute only what a loss needs.

The vocabulary head dominates the cost when prompts are long (49k x 576 for SmolLM2), so logits are
computed only at positions whose next token carries a label, via transformers' `logits_to_keep`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tunelab.data.batch import LMBatch
from tunelab.data.render import IGNORE


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
    temperature, so these are the log-probs of the distribution the tokens were drawn from.
    """
    predicts = torch.zeros_like(target_mask, dtype=torch.bool)  # (B, T) position t scores token t+1
    predicts[:, :-1] = target_mask[:, 1:].bool()
    targets = input_ids[:, 1:][target_mask[:, 1:].bool()]  # (K,)
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    is_prompt, n_virtual = prompt_learning(model)
    if is_prompt:
        if value_head is not None:
            raise ValueError(
                "a value head (PPO) needs lora, dora or full fine-tuning, not prompt/prefix tuning"
            )
        keep = torch.cat([predicts.new_zeros(predicts.shape[0], n_virtual), predicts], dim=1)
        out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep)
    else:
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=predicts,
            output_hidden_states=value_head is not None,
        )
    logits = out.logits.reshape(-1, out.logits.shape[-1]).float() / temperature  # (K, V)
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(1, targets[:, None]).squeeze(1)  # (K,)
    entropy = -(logp_all.exp() * logp_all).sum(dim=-1)  # (K,)
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1][predicts]  # (K, H)
        values = value_head(hidden.to(value_head.weight.dtype)).squeeze(-1).float()
    return logp, entropy, values


def sequence_logprobs(model, batch: LMBatch) -> Tensor:
    """Sum of log-probs of the labelled tokens of each row: (B,). For DPO."""
    logits, targets = next_token_logits(model, batch)  # (K, V), (K,)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)  # (K,)
    rows = torch.arange(batch.labels.shape[0], device=logp.device)[:, None].expand_as(batch.labels[:, 1:])
    row_of_target = rows[batch.labels[:, 1:] != IGNORE]  # (K,)
    return torch.zeros(batch.labels.shape[0], device=logp.device).index_add(0, row_of_target, logp)
