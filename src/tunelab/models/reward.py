"""A reward model's forward pass: the LM body, then a scalar head read at the last real token.

The model is an HF `XForSequenceClassification` with one label (so it saves, loads and serves like
any reward model), but the score is taken here, at the last position the attention mask marks as
real: never from the pad id (pad = eos is common, and then the pad id finds the wrong token).
Position ids come from the mask too, so left and right padding give the same scores.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tunelab.data.layout import Layout
from tunelab.errors import TunelabError
from tunelab.models.attention import attention_inputs
from tunelab.models.capability import inner


def last_token_index(attention_mask: Tensor) -> Tensor:
    """(B, T) 0/1 mask -> (B,) index of each row's last real token, for left or right padding."""
    T = attention_mask.shape[1]
    positions = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
    index = (positions * attention_mask).amax(dim=1)  # (B,)
    if bool((attention_mask.sum(dim=1) == 0).any()):
        raise TunelabError("A sequence has no real token (an all-zero attention mask): nothing to score.")
    return index


def _seq_cls_model(model):
    """The HF sequence-classification model inside a PeftModel (or the model itself)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(inner, "score") or not hasattr(inner, "base_model_prefix"):
        raise TunelabError(f"{type(inner).__name__} has no scalar reward head; load it with head='reward'.")
    return inner


def layout_rewards(model, batch: Layout) -> Tensor:
    """(S,) the reward of each continuation of a laid-out batch (data/layout.py), read at its last token.

    Invariant: packed and padded layouts of the same segments give the same rewards within 1e-5."""
    head = _seq_cls_model(inner(model))
    hidden = model(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        output_hidden_states=True,
        **attention_inputs(model, batch),  # the mask; packed: views (models/attention.py)
    ).hidden_states[-1]  # (R, T, H) after the final norm
    pooled = hidden.reshape(-1, hidden.shape[-1])[batch.last]  # (S, H)
    return head.score(pooled).squeeze(-1).float()  # (S,)


def rewards(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, T) ids and 0/1 mask (left or right padding) -> (B,) scalar rewards, in one forward.

    The forward goes through `model` itself (under DDP that is what syncs the gradients); its own
    pooled logits are ignored, the score is read from the final hidden state at the last real token.
    """
    last = last_token_index(attention_mask)  # (B,) every row has a token to score
    head = _seq_cls_model(inner(model))
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(
        min=0
    )  # (B, T) same for both padding sides
    hidden = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        output_hidden_states=True,
    ).hidden_states[-1]  # (B, T, H) after the final norm
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)
    return head.score(pooled).squeeze(-1).float()  # (B,)
