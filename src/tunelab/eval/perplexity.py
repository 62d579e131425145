"""Perplexity of a model on plain text: exp of the mean next-token loss over every token.

    ppl = perplexity(model, tok, GENERAL_TEXT, block=256)

The text is tokenised once and cut into blocks of `block` tokens; every token after a block's first is
predicted once. Adapters are used as they are (a prompt-tuning adapter's virtual tokens included).
"""

from __future__ import annotations

import math

import torch

from tunelab.models import precision


@torch.no_grad()
def perplexity(model, tok, text: str, *, block: int = 256) -> float:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    total, count = 0.0, 0
    model.eval()
    for start in range(0, len(ids) - 1, block):
        chunk = torch.tensor([ids[start : start + block]])  # (1, T)
        if chunk.shape[1] < 2:
            break
        with precision.compute():
            out = model(input_ids=chunk, attention_mask=torch.ones_like(chunk))
        logits = out.logits[:, -chunk.shape[1] :]  # prompt tuning prepends virtual tokens: keep the text's
        loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), chunk[0, 1:], reduction="sum")
        total, count = total + loss.item(), count + chunk.shape[1] - 1
    return math.exp(total / max(count, 1))
