"""Preference pairs -> token ids -> batches for the reward model.

pair, cut = render_preference(tok, row, opts, max_len)     # two id lists, rendered as in SFT
batch = collate_pairs([Pair(...), ...], pad_id, packed)    # one segment per pair (data/layout.py)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tunelab.data.layout import Layout, lay_out, pair_segment
from tunelab.data.render import RenderOptions, render_answer
from tunelab.errors import TunelabError


@dataclass
class Pair:
    chosen: list[int]
    rejected: list[int]
    margin: float = 0.0
    weight: float = 1.0


@dataclass
class PairBatch:
    seqs: Layout  # continuation 2i is pair i's chosen answer, 2i + 1 its rejected (the one preference layout)
    margin: Tensor  # (B,) required gap r_w - r_l (0 when the data gives none)
    weight: Tensor  # (B,) each pair's weight in the loss

    @property
    def n_targets(self) -> int:
        """The loop averages over pairs."""
        return int(self.margin.shape[0])


def fit_pair(ids: list[int], max_len: int) -> list[int]:
    """Keep the last max_len tokens: the reward is read at the end, so the end must stay."""
    return ids[-max_len:]


def render_preference(tok, row: dict, opts: RenderOptions, max_len: int) -> tuple[Pair, bool]:
    """(the pair, whether it was cut to max_len)."""
    chosen = render_answer(tok, row["prompt"], row["chosen"], opts).input_ids
    rejected = render_answer(tok, row["prompt"], row["rejected"], opts).input_ids
    cut = len(chosen) > max_len or len(rejected) > max_len
    return Pair(
        fit_pair(chosen, max_len), fit_pair(rejected, max_len), row.get("margin", 0.0), row.get("weight", 1.0)
    ), cut


def collate_pairs(
    pairs: list[Pair], pad_id: int, packed: bool = False, max_len: int | None = None, views: bool = False
) -> PairBatch:
    """Each pair one segment: the prompt its two renderings share, then the chosen and the rejected answer."""
    if any(len(s) == 0 for p in pairs for s in (p.chosen, p.rejected)):
        raise TunelabError(
            "A preference answer rendered to no tokens: there is no last token to read a reward at."
        )
    segments = [pair_segment(p.chosen, p.rejected) for p in pairs]
    return PairBatch(
        lay_out(segments, pad_id, packed=packed, max_len=max_len, views=views),
        torch.tensor([p.margin for p in pairs]),
        torch.tensor([p.weight for p in pairs]),
    )


def pair_batches(
    pairs: list,
    batch_size: int,
    collate,
    length,
    seed: int = 0,
    shuffle: bool = True,
    group_by_length: bool = False,
):
    """Preference pairs (the reward model's or DPO's) shuffled per epoch, `batch_size` pairs per micro-batch,
    made by `collate(chunk)`; with `group_by_length`, pairs of similar `length(pair)` (the longer answer)
    share a micro-batch."""
    from tunelab.data.sources import Shuffled

    lengths = [length(p) for p in pairs] if group_by_length else None
    return Shuffled(pairs, batch_size, collate, seed, shuffle, lengths)
