"""Batches: rendered rows -> padded or packed tensors, and the attention mask that keeps packed rows apart.

    batch = collate(items, pad_id=tok.pad_token_id)          # one row per sequence, right padding
    batch = collate(pack(items, max_len=1024), pad_id=...)   # several rows per sequence

Labels follow the Hugging Face convention: aligned with `input_ids`, shifted inside the loss.
A packed sequence carries a 4-D block-diagonal causal mask: position ids that restart per document
do *not* keep documents apart in transformers' SDPA/eager attention, the 4-D mask does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tunelab.data.render import IGNORE, Tokenized


@dataclass
class LMBatch:
    input_ids: Tensor  # (B, T) token ids, pad id where there is no token
    labels: Tensor  # (B, T) targets aligned with input_ids (shifted in the loss), -100 where no loss
    attention_mask: Tensor  # (B, T) 1 for real tokens, or (B, 1, T, T) bool block-causal for packed rows
    position_ids: Tensor  # (B, T) restart at 0 at each packed document
    n_tokens: int = 0  # real (non-padding) tokens

    @property
    def n_targets(self) -> int:
        """Tokens that carry loss (the first position never does: nothing predicts it)."""
        return int((self.labels[:, 1:] != IGNORE).sum())

    def model_inputs(self) -> dict[str, Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
        }

    def select(self, rows: list[int]) -> LMBatch:
        """These rows, without the columns that are padding in all of them (2-D attention masks only)."""
        mask = self.attention_mask[rows]
        cols = real_columns(mask)
        return LMBatch(
            self.input_ids[rows, cols],
            self.labels[rows, cols],
            mask[:, cols],
            self.position_ids[rows, cols],
            int(mask.sum()),
        )


@dataclass
class Packed:
    """Several rendered rows laid end to end in one sequence."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]


def pack(items: list[Tokenized], max_len: int) -> list[Packed]:
    """Next-fit packing in the given order: a row never spans two sequences, none is cut.

    The first token of every document gets no label, so nothing is learnt across a boundary.
    """
    out: list[Packed] = []
    cur = Packed([], [], [])
    for item in items:
        n = len(item.input_ids)
        if n > max_len:
            raise ValueError(
                f"a row of {n} tokens is longer than max_len={max_len}; fit lengths before packing"
            )
        if len(cur.input_ids) + n > max_len:
            out.append(cur)
            cur = Packed([], [], [])
        cur.input_ids += item.input_ids
        cur.labels += [IGNORE, *item.labels[1:]]
        cur.position_ids += list(range(n))
    if cur.input_ids:
        out.append(cur)
    return out


def block_causal_mask(position_ids: Tensor, lengths: Tensor) -> Tensor:
    """(B, 1, T, T) bool: query i sees key j iff same document, j <= i, and j is a real token."""
    B, T = position_ids.shape
    real = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
    doc = torch.cumsum((position_ids == 0).long(), dim=1)  # (B, T) document index, new at each restart
    same_doc = doc[:, :, None] == doc[:, None, :]  # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    mask = same_doc & causal & real[:, None, :]
    # padding queries attend to themselves only, so no row of the mask is empty (no NaN in softmax)
    mask |= torch.eye(T, dtype=torch.bool)[None] & ~real[:, :, None]
    return mask[:, None]


def collate(items: list[Tokenized] | list[Packed], pad_id: int) -> LMBatch:
    """Right-pad to the longest row; packed rows get the 4-D block-diagonal mask."""
    packed = bool(items) and isinstance(items[0], Packed)
    T = max(len(it.input_ids) for it in items)
    B = len(items)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    lengths = torch.zeros(B, dtype=torch.long)
    for b, it in enumerate(items):
        n = len(it.input_ids)
        input_ids[b, :n] = torch.tensor(it.input_ids)
        labels[b, :n] = torch.tensor(it.labels)
        position_ids[b, :n] = torch.tensor(it.position_ids) if packed else torch.arange(n)
        lengths[b] = n
    if packed:
        attention_mask = block_causal_mask(position_ids, lengths)
    else:
        attention_mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    return LMBatch(input_ids, labels, attention_mask, position_ids, int(lengths.sum()))


def real_columns(attention_mask: Tensor) -> slice:
    """(B, T) 0/1 mask -> the columns from the first to the last that holds a real token in some row."""
    cols = attention_mask.bool().any(dim=0).nonzero().flatten()
    return slice(int(cols[0]), int(cols[-1]) + 1) if len(cols) else slice(0, 0)
