"""DPO's batches: grouped by length on request, every pair once per epoch."""

import random
from types import SimpleNamespace

import torch

from tunelab.config import load_config
from tunelab.config.schema import DPOConfig
from tunelab.data.render import IGNORE, Tokenized
from tunelab.stages import dpo


def answer(prompt: list[int], n: int, token: int) -> Tokenized:
    """prompt + n answer tokens; labels only on the answer."""
    return Tokenized(prompt + [token] * n, [IGNORE] * len(prompt) + [token] * n)


def test_group_by_length_reaches_the_dpo_batches():
    """data.group_by_length groups pairs (by their longer row) as SFT groups rows; every pair still
    appears once per epoch, in a seeded order, and a resumed epoch skips exactly what was done."""
    lengths = [random.Random(i).choice([3, 40]) for i in range(64)]  # short pairs and long pairs
    pairs = [(answer([5, i], n, 7), answer([5, i], n - 1, 8)) for i, n in enumerate(lengths)]
    tok = SimpleNamespace(pad_token_id=0)

    def epoch(group, start=0):
        cfg = load_config(DPOConfig, None, ["train.batch_size=4", f"data.group_by_length={group}"])
        return list(dpo.train_batches(pairs, tok, cfg).epoch(0, start))

    def padding(batches):
        return sum(b.seqs.input_ids.numel() - b.seqs.n_tokens for b in batches)

    def pair_ids(batches):  # each row's second token is its pair's index
        return [b.seqs.input_ids[:, 1].tolist() for b in batches]

    plain, grouped = epoch(False), epoch(True)
    assert padding(grouped) < padding(plain) / 3
    assert sorted(i for row in pair_ids(grouped) for i in row) == sorted(2 * list(range(64)))  # each once
    assert all(torch.equal(a.seqs.input_ids, b.seqs.input_ids) for a, b in zip(grouped, epoch(True)))
    assert pair_ids(epoch(True, start=5)) == pair_ids(grouped[5:])  # a resumed epoch skips exactly
