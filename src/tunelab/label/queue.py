"""Who sees which pair, in which order, with which answer on the left.

    queues = plan_queues(items, honeypots, ["ann", "bob"], overlap=2, honeypot_share=0.1,
                         repeat_share=0.1, repeat_gap=5, rng=random.Random(0))

Planned once, up front, and stored: so progress ("17 / 200") has a fixed total, and the statistics
know exactly what each assessor was shown. Each item goes to `overlap` assessors, the least loaded first
(ties at random). Honeypots are scattered through a queue and look like any other item. A share of each
assessor's items comes back later — at least `repeat_gap` items later when the queue allows — with the
sides swapped, to measure self-consistency. The side of each showing is drawn at random.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tunelab.label.pairs import Item


@dataclass(eq=False)  # identity, not value: a repeat points at its own original showing
class Showing:
    item: Item
    left: str  # "a" | "b": which of the item's answers is shown on the left
    repeat_of: Showing | None = None


def _assign(
    items: list[Item], assessors: list[str], overlap: int, loads: dict[str, int], rng: random.Random
) -> dict[str, list[Item]]:
    """Each item to `overlap` distinct assessors, least loaded first, ties broken at random."""
    load = {a: loads.get(a, 0) for a in assessors}
    out: dict[str, list[Item]] = {a: [] for a in assessors}
    for item in items:
        order = sorted(assessors, key=lambda a: (load[a], rng.random()))
        for a in order[:overlap]:
            out[a].append(item)
            load[a] += 1
    return out


def _mix_honeypots(
    regular: list[Item], honeypots: list[Item], share: float, rng: random.Random
) -> list[Item]:
    """`regular` with honeypots at random places so they make up `share` of the result (as far as they go)."""
    if not honeypots or share <= 0 or not regular:
        return list(regular)
    want = round(share / (1 - share) * len(regular))
    chosen = rng.sample(honeypots, min(want, len(honeypots)))
    mixed = list(regular)
    for hp in chosen:
        mixed.insert(rng.randint(0, len(mixed)), hp)
    return mixed


def _with_repeats(base: list[Showing], share: float, gap: int, rng: random.Random) -> list[Showing]:
    """`base` plus a swapped repeat of a share of its regular items, each `gap`+ places after its original."""
    regular = [i for i, s in enumerate(base) if s.item.gold is None]
    n = round(share * len(regular))
    if n == 0:
        return base
    later: dict[int, list[Showing]] = {}  # place in base -> repeats inserted before it
    for i in sorted(rng.sample(regular, n)):
        orig = base[i]
        place = rng.randint(min(i + gap + 1, len(base)), len(base))
        later.setdefault(place, []).append(Showing(orig.item, "b" if orig.left == "a" else "a", orig))
    out: list[Showing] = []
    for i in range(len(base) + 1):
        out += later.get(i, [])
        if i < len(base):
            out.append(base[i])
    return out


def plan_queues(
    items: list[Item],
    honeypots: list[Item],
    assessors: list[str],
    *,
    overlap: int,
    honeypot_share: float,
    repeat_share: float,
    repeat_gap: int,
    rng: random.Random,
    loads: dict[str, int] | None = None,
) -> dict[str, list[Showing]]:
    """Each assessor's queue of showings, in order. `loads`: items already queued (for balance)."""
    items = list(items)
    rng.shuffle(items)
    per_assessor = _assign(items, assessors, overlap, loads or {}, rng)
    queues = {}
    for a in assessors:
        mine = per_assessor[a]
        rng.shuffle(mine)
        mixed = _mix_honeypots(mine, honeypots, honeypot_share, rng)
        base = [Showing(it, rng.choice("ab")) for it in mixed]
        queues[a] = _with_repeats(base, repeat_share, repeat_gap, rng)
    return queues
