"""Preference pairs -> token ids -> batches for the reward model (and DPO later).

chosen, rejected = render_preference(tok, row, opts)      # two id lists, rendered as in SFT
batch = collate_pairs([Pair(...), ...], pad_id)            # chosen rows first, then rejected
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tunelab.data.render import RenderOptions, render_chat, render_pair, render_text
from tunelab.errors import TunelabError


@dataclass
class Pair:
    chosen: list[int]
    rejected: list[int]
    margin: float = 0.0
    weight: float = 1.0


@dataclass
class PairBatch:
    input_ids: Tensor  # (2B, T) the B chosen sequences, then the B rejected ones; right-padded
    attention_mask: Tensor  # (2B, T) 1 for real tokens
    margin: Tensor  # (B,) required gap r_w - r_l (0 when the data gives none)
    weight: Tensor  # (B,) each pair's weight in the loss

    @property
    def n_targets(self) -> int:
        """The loop averages over pairs."""
        return int(self.margin.shape[0])


def render_answer(tok, prompt, answer, opts: RenderOptions) -> list[int]:
    """Prompt + answer rendered exactly as SFT renders them (chat template, or prompt + SEP + answer + EOS)."""
    if isinstance(answer, list):  # a chat continuation, or a whole chat
        head = (
            prompt if isinstance(prompt, list) else ([{"role": "user", "content": prompt}] if prompt else [])
        )
        return render_chat(tok, head + answer).input_ids
    if isinstance(prompt, list):
        return render_chat(tok, prompt + [{"role": "assistant", "content": answer}]).input_ids
    if not prompt:
        return render_text(tok, answer).input_ids
    return render_pair(tok, prompt, answer, opts).input_ids


def fit_pair(ids: list[int], max_len: int) -> list[int]:
    """Keep the last max_len tokens: the reward is read at the end, so the end must stay."""
    return ids[-max_len:]


def render_preference(tok, row: dict, opts: RenderOptions, max_len: int) -> tuple[Pair, bool]:
    """(the pair, whether it was cut to max_len)."""
    chosen = render_answer(tok, row["prompt"], row["chosen"], opts)
    rejected = render_answer(tok, row["prompt"], row["rejected"], opts)
    cut = len(chosen) > max_len or len(rejected) > max_len
    return Pair(
        fit_pair(chosen, max_len), fit_pair(rejected, max_len), row.get("margin", 0.0), row.get("weight", 1.0)
    ), cut


def collate_pairs(pairs: list[Pair], pad_id: int) -> PairBatch:
    seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    if any(len(s) == 0 for s in seqs):
        raise TunelabError(
            "A preference answer rendered to no tokens: there is no last token to read a reward at."
        )
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return PairBatch(
        ids, mask, torch.tensor([p.margin for p in pairs]), torch.tensor([p.weight for p in pairs])
    )


def pair_batches(
    pairs: list[Pair],
    batch_size: int,
    pad_id: int,
    seed: int = 0,
    shuffle: bool = True,
    group_by_length: bool = False,
):
    """Pairs shuffled per epoch, `batch_size` pairs per micro-batch; with `group_by_length`, pairs of
    similar length share a micro-batch (its rows are padded to the longer answer of its longest pair)."""
    from tunelab.data.sources import Shuffled

    lengths = [max(len(p.chosen), len(p.rejected)) for p in pairs] if group_by_length else None
    return Shuffled(pairs, batch_size, lambda chunk: collate_pairs(chunk, pad_id), seed, shuffle, lengths)
