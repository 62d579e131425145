"""Forward passes that compute only what a loss needs.

The vocabulary head dominates the cost when prompts are long (49k x 576 for SmolLM2), so logits are
computed only at positions whose next token carries a label, via transformers' `logits_to_keep`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tunelab.data.batch import LMBatch
from tunelab.data.render import IGNORE


def prompt_learning(model) -> tuple[bool, int]:
    """(is the active adapter prompt/prefix tuning, virtual tokens prepended to the sequence)."""
    config = getattr(model, "active_peft_config", None)
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
