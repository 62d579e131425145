"""TokenBlocks: pre-training blocks read straight from a token folder (`tunelab data tokenize`).

    blocks = TokenBlocks("tok/", block_len=1024, batch_size=8, seed=0)
    for batch in blocks.epoch(0, start=120): ...     # resume: jumps to micro-batch 120, reads nothing before

Block i is tokens[i*(L-1) : i*(L-1)+L]: consecutive blocks overlap by one token, as TextBlocks' do, so
every token after the first is predicted once and documents (ended by EOS) may share a block. Each epoch
visits the blocks in a seeded random order (seed, epoch); a block is one contiguous read of the memory
map, so batches come at disk speed and nothing but the order (8 bytes per block) is held in memory.

Several processes: each global micro-batch is batch_size x world blocks of that order, and rank r takes
its share (`shard`), so the ranks' blocks are disjoint and N processes x batch b see what one process x
batch N*b would.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tunelab.data.layout import Layout
from tunelab.data.prep.tokenize import read_meta
from tunelab.data.shard import share
from tunelab.data.sources import blocks_layout
from tunelab.errors import TunelabError


class TokenBlocks:
    def __init__(
        self,
        folder: str | Path,
        block_len: int,
        batch_size: int,
        seed: int = 0,
        holdout_every: int = 0,
        split: str = "train",
        max_blocks: int | None = None,
        rank: int = 0,
        world: int = 1,
        packed: bool = False,
    ):
        meta = read_meta(folder)
        if meta is None:
            raise TunelabError(f"{folder} is not a finished token folder (no meta.json next to tokens.bin).")
        self.folder, self.meta = Path(folder), meta
        self.block_len, self.batch_size, self.seed = block_len, batch_size, seed
        self.rank, self.world, self.packed = rank, world, packed
        self.tokens = np.memmap(
            self.folder / "tokens.bin", dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"],)
        )
        n = meta["n_tokens"]
        ids = np.arange((n - 1) // (block_len - 1) if n >= block_len else 0, dtype=np.int64)
        if holdout_every:  # every holdout_every-th block is held out for evaluation
            ids = ids[(ids % holdout_every == 0) == (split == "eval")]
        self.ids = ids[:max_blocks] if max_blocks else ids

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def micro_batches_per_epoch(self) -> int:
        """Full global batches, and a last partial one only if every rank gets a block of it."""
        full, rest = divmod(len(self.ids), self.batch_size * self.world)
        return full + (rest >= self.world)

    def shard(self, dist) -> TokenBlocks:
        """This rank's view (`dist` has .rank and .world, e.g. tunelab.train.dist.Dist)."""
        view = copy.copy(self)
        view.rank, view.world = dist.rank, dist.world
        return view

    def order(self, epoch: int) -> np.ndarray:
        """Block ids of `epoch` in its seeded order (the same on every rank)."""
        return self.ids[np.random.default_rng([self.seed, epoch]).permutation(len(self.ids))]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Layout]:
        """Micro-batches of `epoch` from the `start`-th on: a resumed run jumps straight there."""
        order = self.order(epoch)
        per_step = self.batch_size * self.world
        for k in range(start, self.micro_batches_per_epoch):
            chunk = order[k * per_step : (k + 1) * per_step]
            lo, hi = share(len(chunk), self.rank, self.world)
            yield self.batch(chunk[lo:hi])

    def batch(self, block_ids: np.ndarray) -> Layout:
        step = self.block_len - 1
        rows = np.stack([self.tokens[i * step : i * step + self.block_len] for i in block_ids.tolist()])
        return blocks_layout(rows.astype(np.int64).tolist(), self.packed)  # every block full: no padding
