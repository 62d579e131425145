"""One layout for every batch: segments (a prompt and 1..G continuations) laid out packed or padded.

    segments = [Segment(prompt_ids, [chosen_ids, rejected_ids])]          # a DPO pair
    batch = lay_out(segments, pad_id, packed=takes_4d_mask(model), max_len=1024)
    logp, _, _ = layout_logprobs(model, batch)                            # models/forward.py

A segment is what the batch maker knows belongs together: an SFT row or an RM answer (no prompt, one
continuation), a DPO pair (a prompt, two answers), an RL group (a prompt, G completions). Continuations
are numbered in segment order (segment 0's continuations first); every per-continuation value of the
batch (`last`, sums of log-probs, rewards) is in that order.

*Padded*: one row per continuation, `prompt + continuation`, right-padded; a 2-D attention mask.
*Packed*: segments end to end in rows of at most `max_len` positions (a segment longer than that gets a
row of its own; rows are capped at the longest segment instead when that costs less), each
prompt once, followed by its continuations; a 4-D mask (R, 1, T, T) lets a token
see the earlier tokens of its own prompt and its own continuation only, and position ids continue each
prompt into each of its continuations. Every token then has exactly the keys and positions it has in
its padded row, so the two layouts give the same log-probs, rewards and gradients up to float
rounding (tests/test_layout.py checks 1e-5 for every stage). The last prompt token predicts the first
token of every continuation: its logits are computed once and read G times. With `views=True` (the model
runs SDPA), a packed batch may also list each continuation's *view* (keys: its prompt's positions, then
its own; queries: all of them for a segment's first continuation, its own for the others): its
attention then runs per view (models/attention.py), rows may be long, and padding leaves the linear
layers; that is taken only where it saves a tenth of the positions. Without views, rows are chosen by
what they cost with their mask, attention included (`_masked_cost`).

Targets are listed explicitly rather than as shifted labels, since one position may predict several
targets: target k is token `target_ids[k]`, predicted by the logits at flat position `source[k]` of the
(R, T) grid, and belongs to continuation `target_seq[k]`. Targets come continuation by continuation,
in token order (the row-major order of the padded layout). A prompt carries no targets.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

IGNORE = -100  # the label of a token that carries no loss (as data/render.py)


@dataclass
class Segment:
    prompt: list[int]  # tokens every continuation follows (may be empty)
    continuations: list[list[int]]  # 1..G token lists, each non-empty
    labels: list[list[int]] | None = None  # per continuation, aligned with its tokens; IGNORE: no target.
    # None: every continuation token is a target (an empty prompt's first token never is: nothing predicts it)


@dataclass
class ViewBucket:
    """Views of similar size, for one attention call (models/attention.py). A view is a continuation's
    keys, its prompt's positions then its own, and its queries: the first continuation of a segment
    asks for all of them (its prompt's outputs are read from it), every other one for its own only."""

    keys: Tensor  # (V, Lk) flat (R, T) positions of each view's keys, right-padded with position 0
    queries: Tensor  # (V, Lq) flat positions of its queries, the last Lq_v of its keys, right-padded
    skip: Tensor  # (V,) keys before a view's first query: query i sees keys 0 .. skip + i

    def to(self, device) -> ViewBucket:
        return ViewBucket(self.keys.to(device), self.queries.to(device), self.skip.to(device))


@dataclass
class Layout:
    input_ids: Tensor  # (R, T) token ids, pad id where there is no token
    attention_mask: Tensor  # padded: (R, T) 1 on tokens; packed: (R, 1, T, T) bool, query row sees key column
    position_ids: Tensor  # (R, T) each prompt from 0, each continuation continuing its prompt
    source: Tensor  # (K,) flat index into (R, T) of the position whose logits predict each target
    target_ids: Tensor  # (K,) the target tokens
    target_seq: Tensor  # (K,) the continuation each target belongs to
    last: Tensor  # (S,) flat index into (R, T) of each continuation's last token (reward models read it)
    n_seqs: int  # S: continuations in the batch
    packed: bool
    n_tokens: int = 0  # positions that hold a token (a packed prompt counts once)
    # packed only, for attention per continuation (models/attention.py): each continuation's view is its
    # prompt's positions then its own, as flat (R, T) indices, in buckets of similar size
    views: list[ViewBucket] | None = None
    home: Tensor | None = None  # (R * T,) the query slot (buckets' end to end) each position is read from

    @property
    def n_targets(self) -> int:
        return int(self.target_ids.shape[0])

    def to(self, device) -> Layout:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        moved = {k: v.to(device) for k, v in moved.items() if isinstance(v, Tensor)}
        if self.views is not None:
            moved["views"] = [bucket.to(device) for bucket in self.views]
        return replace(self, **moved)


def _targets(seg: Segment, c: int) -> Tensor:
    """(k,) offsets into continuation c of its target tokens, in token order."""
    if seg.labels is not None:
        marks = torch.tensor(seg.labels[c], dtype=torch.long) != IGNORE
    else:
        marks = torch.ones(len(seg.continuations[c]), dtype=torch.bool)
    if not seg.prompt and len(marks):
        marks[0] = False  # nothing predicts the first token of a row
    return marks.nonzero().flatten()


def _rows(segments: list[Segment], max_len: int | None) -> list[list[int]]:
    """Segment indices per packed row, none split: first fit in decreasing length, so rows fill up and
    the batch pads little (where a segment sits does not change the continuations' order)."""
    length = [len(seg.prompt) + sum(len(c) for c in seg.continuations) for seg in segments]
    rows: list[list[int]] = []
    used: list[int] = []
    for i in sorted(range(len(segments)), key=lambda i: -length[i]):
        fit = next((r for r, n in enumerate(used) if max_len is not None and n + length[i] <= max_len), None)
        if fit is None:
            rows.append([i])
            used.append(length[i])
        else:
            rows[fit].append(i)
            used[fit] += length[i]
    return [sorted(row) for row in rows]


def _positions(segments: list[Segment], rows: list[list[int]]) -> int:
    """Positions a batch of these rows takes: rows x the longest row."""
    length = [len(seg.prompt) + sum(len(c) for c in seg.continuations) for seg in segments]
    return len(rows) * max(sum(length[i] for i in row) for row in rows)


MASKED_EVEN = 600  # row length at which a masked row's attention costs as much again as its other work


def _masked_cost(segments: list[Segment], rows: list[list[int]]) -> float:
    """What a batch of these rows costs with its mask, in positions: every layer's per-position work
    (rows x the longest row) plus dense attention, which grows with the row. The attention kernels
    compute every query against every key of a row, masked or not; at MASKED_EVEN positions that
    doubles a position's cost (SmolLM2 + LoRA in bf16 on a CPU: an RL step's two segments in one row of
    430 took 2.51 s for its forwards and backward, in two rows of 238 2.24 s; docs/decisions.md)."""
    longest = _positions(segments, rows) / len(rows)
    return _positions(segments, rows) * (1 + longest / MASKED_EVEN)


def _candidate_rows(segments: list[Segment], max_len: int | None) -> list[list[list[int]]]:
    """Rows capped at the longest segment, and at `max_len` when that is longer. Capped at the longest
    segment, packing never makes a row longer than padding would; a larger cap fills rows with many
    short segments."""
    length = [len(seg.prompt) + sum(len(c) for c in seg.continuations) for seg in segments]
    caps = sorted({max(length), *([max_len] if max_len is not None and max_len > max(length) else [])})
    return [_rows(segments, cap) for cap in caps]


VIEW_ROWS = 4096  # row length allowed when attention runs per view: a (T, T) mask of 16 MB of booleans
VIEWS_SAVE = 0.9  # views when their long rows take at most this share of the fewest short-row positions


def lay_out(
    segments: list[Segment], pad_id: int, *, packed: bool, max_len: int | None = None, views: bool = False
) -> Layout:
    """The segments as one batch, packed (rows of at most `max_len` positions) or padded.

    `views`: the model can run a packed batch's attention per continuation (models/attention.py), whose
    cost does not grow with the row. The rows may then be up to VIEW_ROWS long, which leaves less padding
    in every linear layer; they are, with views, when that saves at least a tenth of the positions (a
    batch of ragged pairs), else the short rows run their mask (an RL step's groups, a row each)."""
    if not packed:
        return _padded(segments, pad_id)
    candidates = _candidate_rows(segments, max_len)
    rows = min(candidates, key=lambda rows: _masked_cost(segments, rows))  # ties: the shorter rows
    if views:  # against the fewest positions: an RL group's many short views cost more than its mask
        long_rows = _rows(segments, max(VIEW_ROWS, max_len or 0))
        fewest = min(_positions(segments, rows) for rows in candidates)
        views = _positions(segments, long_rows) <= VIEWS_SAVE * fewest
        rows = long_rows if views else rows
    return _packed(segments, pad_id, rows, views)


def _padded(segments: list[Segment], pad_id: int) -> Layout:
    rows = [(seg, c) for seg in segments for c in range(len(seg.continuations))]
    T = max(len(seg.prompt) + len(seg.continuations[c]) for seg, c in rows)
    S = len(rows)
    input_ids = torch.full((S, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((S, T), dtype=torch.long)
    position_ids = torch.zeros((S, T), dtype=torch.long)
    source, target_seq, last = [], [], []
    for r, (seg, c) in enumerate(rows):
        tokens = seg.prompt + seg.continuations[c]
        n, P = len(tokens), len(seg.prompt)
        input_ids[r, :n] = torch.tensor(tokens, dtype=torch.long)
        attention_mask[r, :n] = 1
        position_ids[r, :n] = torch.arange(n)
        j = _targets(seg, c)  # (k,) target offsets into the continuation
        source.append(r * T + P - 1 + j)
        target_seq.append(torch.full_like(j, r))
        last.append(r * T + n - 1)
    source = torch.cat(source)
    return Layout(
        input_ids,
        attention_mask,
        position_ids,
        source,
        input_ids.flatten()[source + 1],  # the token after each source position
        torch.cat(target_seq),
        torch.tensor(last, dtype=torch.long),
        S,
        packed=False,
        n_tokens=int(attention_mask.sum()),
    )


def _packed(segments: list[Segment], pad_id: int, rows: list[list[int]], views: bool) -> Layout:
    lengths = [
        sum(len(segments[i].prompt) + sum(map(len, segments[i].continuations)) for i in row) for row in rows
    ]
    R, T = len(rows), max(lengths)
    input_ids = torch.full((R, T), pad_id, dtype=torch.long)
    position_ids = torch.zeros((R, T), dtype=torch.long)
    # per position: its segment and its continuation (-1: a prompt token, -2: padding), to build the mask
    seg_of = torch.full((R, T), -1, dtype=torch.long)
    cont_of = torch.full((R, T), -2, dtype=torch.long)
    n_conts = [len(seg.continuations) for seg in segments]
    first_seq = [
        sum(n_conts[:i]) for i in range(len(segments))
    ]  # continuation number of each segment's first
    S = sum(n_conts)
    source = [torch.zeros(0, dtype=torch.long)] * S  # per continuation: the positions predicting its targets
    at_target = [torch.zeros(0, dtype=torch.long)] * S  # ... and its targets' own positions
    last = [0] * S
    view_of = [torch.zeros(0, dtype=torch.long)] * S  # per continuation: its view's flat positions
    skip = [0] * S  # per continuation: its view's keys that are not its queries (a later one's prompt)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            seg = segments[i]
            P = len(seg.prompt)
            input_ids[r, at : at + P] = torch.tensor(seg.prompt, dtype=torch.long)
            position_ids[r, at : at + P] = torch.arange(P)
            seg_of[r, at : at + P] = i
            cont_of[r, at : at + P] = -1
            prompt_end = at + P - 1  # flat column of the last prompt token (unused without a prompt)
            prompt_at = torch.arange(r * T + at, r * T + at + P)
            at += P
            for c, tokens in enumerate(seg.continuations):
                s, n = first_seq[i] + c, len(tokens)
                view_of[s] = torch.cat([prompt_at, torch.arange(r * T + at, r * T + at + n)])
                skip[s] = P if c > 0 else 0
                input_ids[r, at : at + n] = torch.tensor(tokens, dtype=torch.long)
                position_ids[r, at : at + n] = torch.arange(P, P + n)
                seg_of[r, at : at + n] = i
                cont_of[r, at : at + n] = s
                j = _targets(seg, c)  # (k,) target offsets into the continuation
                at_target[s] = r * T + at + j
                source[s] = torch.where(j == 0, r * T + prompt_end, at_target[s] - 1)
                last[s] = r * T + at + n - 1
                at += n
    real = cont_of != -2  # (R, T)
    same_seg = seg_of[:, :, None] == seg_of[:, None, :]  # (R, T, T) query row, key column
    key_ok = (cont_of[:, None, :] == -1) | (cont_of[:, None, :] == cont_of[:, :, None])
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    mask = same_seg & key_ok & causal & real[:, None, :] & real[:, :, None]
    mask |= torch.eye(T, dtype=torch.bool)[None] & ~real[:, :, None]  # padding sees itself: no empty row
    views, home = _views(view_of, skip, R * T) if views else (None, None)
    return Layout(
        input_ids,
        mask[:, None],
        position_ids,
        torch.cat(source),
        input_ids.flatten()[torch.cat(at_target)],
        torch.cat([torch.full_like(src, s) for s, src in enumerate(source)]),
        torch.tensor(last, dtype=torch.long),
        S,
        packed=True,
        n_tokens=int(real.sum()),
        views=views,
        home=home,
    )


BUCKET_SHRINK = (
    0.8  # a view with fewer keys or queries than this share of its bucket's first starts a new one
)


def _views(view_of: list[Tensor], skip: list[int], n_positions: int) -> tuple[list[ViewBucket], Tensor]:
    """Each continuation's view (its prompt's flat positions, then its own; `skip`: how many of them are
    not its queries) in buckets of similar size, right-padded with position 0 (a padded key comes after
    every real one, so no real query sees it); and (n_positions,) the query slot, in the buckets' laid
    end to end, each grid position's output is read from: a prompt's from its segment's first view.
    Views that ask for all their keys and views that ask for their continuation's only are bucketed
    apart: mixed, the short queries would be padded to the long ones."""
    n_keys = [len(v) for v in view_of]
    n_queries = [n - k for n, k in zip(n_keys, skip, strict=True)]
    order = sorted(range(len(view_of)), key=lambda v: (skip[v] > 0, -n_keys[v], -n_queries[v]))
    buckets: list[list[int]] = []
    for v in order:
        first = buckets[-1][0] if buckets else None
        if (
            first is None
            or (skip[v] > 0) != (skip[first] > 0)
            or n_keys[v] < BUCKET_SHRINK * n_keys[first]
            or n_queries[v] < BUCKET_SHRINK * max(n_queries[u] for u in buckets[-1])
        ):
            buckets.append([])
        buckets[-1].append(v)
    made, start, offset = [], {}, 0
    for bucket in buckets:
        Lk, Lq = max(n_keys[v] for v in bucket), max(n_queries[v] for v in bucket)
        keys = torch.zeros(len(bucket), Lk, dtype=torch.long)
        queries = torch.zeros(len(bucket), Lq, dtype=torch.long)
        for j, v in enumerate(bucket):
            keys[j, : n_keys[v]] = view_of[v]
            queries[j, : n_queries[v]] = view_of[v][skip[v] :]
            start[v] = offset + j * Lq
        made.append(ViewBucket(keys, queries, torch.tensor([skip[v] for v in bucket], dtype=torch.long)))
        offset += len(bucket) * Lq
    home = torch.zeros(n_positions, dtype=torch.long)  # padding: any slot (nothing reads it)
    for v in range(len(view_of)):
        home[view_of[v][skip[v] :]] = start[v] + torch.arange(n_queries[v])
    return made, home


def shared_prefix(a: list[int], b: list[int], stop: int | None = None) -> int:
    """How many leading tokens two renderings share (at most `stop`): the prompt of a preference pair."""
    n = 0
    limit = min(len(a), len(b)) - 1  # each keeps at least one token of its own
    if stop is not None:
        limit = min(limit, stop)
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def pair_segment(
    chosen: list[int],
    rejected: list[int],
    chosen_labels: list[int] | None = None,
    rejected_labels: list[int] | None = None,
) -> Segment:
    """A preference pair (reward model or DPO) as one segment: the prompt the two renderings share, then
    the chosen and the rejected answer. Without labels nothing is a target (a reward model reads the
    last token of each answer); with them, the shared prompt ends before the first labelled token."""
    stop = None
    if chosen_labels is not None:
        first = [
            i for labels in (chosen_labels, rejected_labels) for i, x in enumerate(labels) if x != IGNORE
        ]
        stop = min(first) if first else None
    P = shared_prefix(chosen, rejected, stop)
    if chosen_labels is None:
        labels = [[IGNORE] * (len(chosen) - P), [IGNORE] * (len(rejected) - P)]
    else:
        labels = [chosen_labels[P:], rejected_labels[P:]]
    return Segment(chosen[:P], [chosen[P:], rejected[P:]], labels)
