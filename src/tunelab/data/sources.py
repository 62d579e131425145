"""Batch sources for the training loop: `epoch(e)` yields micro-batches in a fixed, seeded order.

row_batches   rendered rows (SFT), `batch_size` to a micro-batch, each micro-batch laid out packed or padded
TextBlocks   a text stream cut into fixed-length blocks (pre-training), never held in memory whole

Every batch is a `data/layout.Layout`. The layout (packed or padded) is chosen by the stage and never
changes which units meet in a micro-batch or in what order: a resumed run, or the same seed with the
other layout, trains on the same micro-batches.

Under N processes `source.shard(dist)` gives each rank its share of every *global* micro-batch of
N x batch_size units (rank 0 the first share, and so on): together the ranks see exactly the units one
process with micro-batch N x batch_size would, none twice. An epoch's last global micro-batch with
fewer units than processes is left out (every rank must take part in every step).
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from collections.abc import Iterator
from pathlib import Path

from tunelab.data.layout import Layout, Segment, lay_out
from tunelab.data.read import RowError, normalise, records
from tunelab.data.render import Tokenized, render_text
from tunelab.data.shard import share
from tunelab.errors import DataError, Problem, TunelabError


class Shuffled:
    """Units (rows, pairs, packed sequences) shuffled per epoch (seed + epoch), `batch_size` units per
    micro-batch, turned into a batch by `make_batch`.

    With `lengths`, batches are grouped by length: the shuffled units are cut into windows of 50
    batches, sorted by length inside each window, batched, and the batches shuffled — rows of similar
    length share a batch (little padding) while the order stays random (HF's group_by_length).
    """

    def __init__(
        self,
        units: list,
        batch_size: int,
        make_batch,
        seed: int = 0,
        shuffle: bool = True,
        lengths: list[int] | None = None,
    ):
        self.units, self.batch_size, self.make_batch, self.seed, self.shuffle = (
            units,
            batch_size,
            make_batch,
            seed,
            shuffle,
        )
        self.lengths = lengths
        self.rank, self.world = 0, 1
        self.micro_batches_per_epoch = math.ceil(len(units) / batch_size)

    def shard(self, dist) -> Shuffled:
        """This rank's share of every global micro-batch (see the module docstring)."""
        out = copy.copy(self)
        out.rank, out.world = dist.rank, dist.world
        out.micro_batches_per_epoch = len(out._batches(0))
        return out

    def _batches(self, epoch: int) -> list[list[int]]:
        """The micro-batches of `epoch` as unit indices (this rank's share of each)."""
        batches = self._global_batches(epoch, self.batch_size * self.world)
        if self.world == 1:
            return batches
        return [b[slice(*share(len(b), self.rank, self.world))] for b in batches if len(b) >= self.world]

    def _global_batches(self, epoch: int, batch_size: int) -> list[list[int]]:
        order = list(range(len(self.units)))
        rng = random.Random(self.seed * 1_000_003 + epoch)
        if self.shuffle:
            rng.shuffle(order)
        if self.lengths is not None:
            window = batch_size * 50
            order = [
                i
                for w in range(0, len(order), window)
                for i in sorted(order[w : w + window], key=lambda i: -self.lengths[i])
            ]
        batches = [order[first : first + batch_size] for first in range(0, len(order), batch_size)]
        if self.lengths is not None and self.shuffle:
            rng.shuffle(batches)
        return batches

    def epoch(self, epoch: int, start: int = 0) -> Iterator:
        """Micro-batches of `epoch`, from the `start`-th on (a resumed run skips what it had)."""
        for indices in self._batches(epoch)[start:]:
            yield self.make_batch([self.units[i] for i in indices])

    def all(self) -> list:
        return list(self.epoch(0))


def row_batches(
    items: list[Tokenized],
    batch_size: int,
    pad_id: int,
    seed: int = 0,
    pack_len: int | None = None,
    shuffle: bool = True,
    group_by_length: bool = False,
) -> Shuffled:
    """Rendered rows (SFT), `batch_size` per micro-batch in a seeded order, each micro-batch laid out
    packed (`pack_len`: rows of at most that many positions, a 4-D mask) or padded (None): the order does
    not depend on the layout. A row is one segment (no prompt, one continuation); its labels say which
    tokens are trained."""
    lengths = [len(it.input_ids) for it in items] if group_by_length else None
    return Shuffled(
        list(items),
        batch_size,
        lambda chunk: rows_layout(chunk, pad_id, packed=pack_len is not None, max_len=pack_len),
        seed,
        shuffle,
        lengths,
    )


def rows_layout(items: list[Tokenized], pad_id: int, packed: bool, max_len: int | None = None) -> Layout:
    """Rendered rows as one batch: a row's first token is never a target (nothing predicts it)."""
    segments = [Segment([], [it.input_ids], [it.labels]) for it in items]
    return lay_out(segments, pad_id, packed=packed, max_len=max_len)


def blocks_layout(blocks: list[list[int]], packed: bool = False) -> Layout:
    """Full blocks of raw text (pre-training) as one batch: every token but a block's first is a target.
    Blocks are all `block_len` long, so neither layout pads; packed, each block fills a row of its own."""
    return lay_out([Segment([], [block]) for block in blocks], 0, packed=packed, max_len=len(blocks[0]))


class TextBlocks:
    """Documents -> one token stream (EOS between documents) -> blocks of `block_len` tokens.

    Consecutive blocks overlap by one token, so every token after the first is predicted once.
    Blocks pass through a seeded shuffle buffer; documents with index % holdout_every == 0 are the
    held-out split when `holdout` is 'eval' (and skipped when it is 'train').
    """

    def __init__(
        self,
        paths: list[str],
        tok,
        block_len: int,
        batch_size: int,
        seed: int = 0,
        buffer: int = 1024,
        holdout_every: int = 0,
        split: str = "train",
        max_blocks: int | None = None,
        packed: bool = False,
    ):
        self.packed = packed
        self.paths, self.tok, self.block_len, self.batch_size = paths, tok, block_len, batch_size
        self.seed, self.buffer, self.holdout_every, self.split, self.max_blocks = (
            seed,
            buffer,
            holdout_every,
            split,
            max_blocks,
        )
        self.micro_batches_per_epoch: int | None = None
        self.n_blocks: int | None = None
        self.n_documents: int | None = None
        self.rank, self.world = 0, 1

    def shard(self, dist) -> TextBlocks:
        """This rank's share of every global micro-batch of world x batch_size blocks."""
        out = copy.copy(self)
        out.rank, out.world = dist.rank, dist.world
        out._count_batches()
        return out

    def _documents(self) -> Iterator[list[int]]:
        index = 0
        for path in self.paths:
            for line, record in records(path):
                if isinstance(record, Problem):
                    raise DataError([record], hint=f"run `tunelab data check {path} --kind text`")
                try:
                    row = normalise("text", record)
                except RowError as err:
                    raise DataError(
                        [Problem(str(path), line, err.field, err.message)],
                        hint=f"run `tunelab data check {path} --kind text`",
                    ) from None
                index += 1
                held_out = self.holdout_every and index % self.holdout_every == 0
                if (self.split == "eval") == bool(held_out):
                    yield render_text(self.tok, row["text"]).input_ids
        self.n_documents = index  # of a whole pass: tells an empty input from a short one

    def _blocks(self) -> Iterator[list[int]]:
        stream: list[int] = []
        n = 0
        for ids in self._documents():
            stream += ids
            while len(stream) >= self.block_len:
                yield stream[: self.block_len]
                stream = stream[self.block_len - 1 :]  # overlap one token: the next block predicts from it
                n += 1
                if self.max_blocks and n >= self.max_blocks:
                    return

    def count(self) -> int:
        """Blocks in one epoch (a full pass over the data; also validates every row)."""
        self.n_blocks = sum(1 for _ in self._blocks())
        self._count_batches()
        return self.n_blocks

    def _count_batches(self) -> None:
        if self.n_blocks is None:
            return
        per_step = self.batch_size * self.world
        full, rest = divmod(self.n_blocks, per_step)
        self.micro_batches_per_epoch = full + (rest >= self.world)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Layout]:
        """A stream cannot jump: the first `start` micro-batches are made again and skipped."""
        return itertools.islice(self._epoch(epoch), start, None)

    def _epoch(self, epoch: int) -> Iterator[Layout]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        pool: list[list[int]] = []
        batch: list[list[int]] = []  # the global micro-batch being filled
        per_step = self.batch_size * self.world

        def mine(blocks: list[list[int]]) -> Layout:
            return blocks_layout(blocks[slice(*share(len(blocks), self.rank, self.world))], self.packed)

        def emit(block):
            batch.append(block)
            if len(batch) == per_step:
                out = mine(batch)
                batch.clear()
                return out
            return None

        seen = 0
        for block in self._blocks():
            seen += 1
            pool.append(block)
            if len(pool) >= self.buffer:
                out = emit(pool.pop(rng.randrange(len(pool))))
                if out is not None:
                    yield out
        if seen == 0:  # a dead end, not an epoch: say why rather than loop over nothing
            split = " (its held-out split)" if self.split == "eval" else ""
            what = "has no text" if not self.n_documents else f"holds fewer than {self.block_len} tokens"
            raise TunelabError(
                f"{', '.join(self.paths)}{split} {what}: not one block of train.max_len={self.block_len} "
                "tokens to train on. Add text, or lower train.max_len."
            )
        rng.shuffle(pool)
        for block in pool:
            out = emit(block)
            if out is not None:
                yield out
        if len(batch) >= self.world:
            yield mine(batch)


def text_paths(spec: str) -> list[str]:
    """A file, a folder of files, or a comma-separated list."""
    paths = []
    for part in spec.split(","):
        p = Path(part.strip())
        paths += sorted(str(f) for f in p.iterdir() if f.is_file()) if p.is_dir() else [str(p)]
    return paths
