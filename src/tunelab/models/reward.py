"""A reward model's forward pass: the LM body, then a scalar head read at the last real token.

The model is an HF `XForSequenceClassification` with one label (so it saves, loads and serves like
any reward model), but the score is taken here, at the last position the attention mask marks as
real: never from the pad id (pad = eos is common, and then the pad id finds the wrong token).
Position ids come from the mask too, so left and right padding give the same scores.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tunelab.data.batch import real_columns
from tunelab.errors import TunelabError
from tunelab.models.by_length import by_length
from tunelab.models.forward import inner


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


def rewards(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, T) ids and 0/1 mask -> (B,) scalar rewards.

    Rows of similar length run together, each group padded only to its own longest (models/by_length.py).
    """
    last_token_index(attention_mask)  # every row has a token to score

    def run(rows: list[int] | None) -> Tensor:
        if rows is None:
            return _rewards(model, input_ids, attention_mask)
        mask = attention_mask[rows]
        cols = real_columns(mask)
        return _rewards(model, input_ids[rows, cols], mask[:, cols])

    return by_length(model, attention_mask.sum(dim=1).tolist(), run)


def _rewards(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """One forward: (B, T) ids and mask -> (B,) rewards.

    The forward goes through `model` itself (under DDP that is what syncs the gradients); its own
    pooled logits are ignored, the score is read from the final hidden state at the last real token.
    """
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
    last = last_token_index(attention_mask)  # (B,)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)
    return head.score(pooled).squeeze(-1).float()  # (B,)
