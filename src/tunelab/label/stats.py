"""Quality of the labels: per assessor, per item, and the preference graph of each prompt.

    report = summarize(store.labels(), project.cfg.thresholds)   # a JSON-ready dict

- honeypot accuracy: share of gold items judged right (a tie or 'both bad' on a honeypot is wrong);
- self-consistency: share of repeats (shown again, sides swapped) judged as the first time;
- position bias: share of 'left' among the left/right picks (0.5 = none; an assessor who always
  clicks left has 1.0 and, since repeats swap sides, self-consistency 0);
- agreement: Cohen's kappa with each other assessor over the items both labelled, averaged with the
  shared counts as weights; the project gets Krippendorff's alpha (nominal, any number of votes);
- labels per hour: labels over active time (gaps longer than `idle_cap` seconds count as `idle_cap`);
- per item: the majority and its share of the votes; per prompt: the majority preference graph, its
  cycles and the intransitive triples (A > B, B > C, C > A).
A vote is an assessor's first label of an item; repeats only measure consistency.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import combinations

from tunelab.label.project import Thresholds

CHOICES = ("left", "right", "tie", "both_bad")


@dataclass(frozen=True)
class Label:
    assessor: str
    item: str  # item key
    choice: str  # left | right | tie | both_bad, as clicked
    left: str = "a"  # which answer ("a" or "b") was on the left
    prompt: str = ""
    system_a: str = "a"
    system_b: str = "b"
    gold: str | None = None  # "a" for a honeypot
    assignment: int = 0  # the showing
    repeat_of: int | None = None  # the showing this one repeats
    created_at: float = 0.0
    shown_at: float | None = None
    reasons: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def winner(self) -> str:
        """The choice in terms of the item's answers: a | b | tie | both_bad."""
        if self.choice == "left":
            return self.left
        if self.choice == "right":
            return "b" if self.left == "a" else "a"
        return self.choice


def share(hits: int, n: int) -> float | None:
    return hits / n if n else None


def position_bias(labels: list[Label]) -> tuple[float | None, int]:
    picks = [lb.choice for lb in labels if lb.choice in ("left", "right")]
    return share(picks.count("left"), len(picks)), len(picks)


def honeypot_accuracy(labels: list[Label]) -> tuple[float | None, int]:
    gold = [lb for lb in labels if lb.gold is not None]
    return share(sum(lb.winner == lb.gold for lb in gold), len(gold)), len(gold)


def self_consistency(labels: list[Label]) -> tuple[float | None, int]:
    by_showing = {lb.assignment: lb for lb in labels}
    pairs = [(by_showing[lb.repeat_of], lb) for lb in labels if lb.repeat_of in by_showing]
    return share(sum(a.winner == b.winner for a, b in pairs), len(pairs)), len(pairs)


def labels_per_hour(labels: list[Label], idle_cap: float = 300.0) -> float | None:
    """Labels over active time; the first label's time starts when its item was first shown."""
    times = sorted(labels, key=lambda lb: lb.created_at)
    if not times:
        return None
    first = times[0]
    active = min(first.created_at - first.shown_at, idle_cap) if first.shown_at is not None else 0.0
    active += sum(min(b.created_at - a.created_at, idle_cap) for a, b in zip(times, times[1:]))
    return len(times) / (active / 3600) if active > 0 else None


def votes(labels: list[Label]) -> dict[str, dict[str, str]]:
    """item -> {assessor: winner}: each assessor's first label of each item (repeats left out)."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for lb in sorted(labels, key=lambda lb: lb.assignment):
        if lb.repeat_of is None:
            out[lb.item].setdefault(lb.assessor, lb.winner)
    return dict(out)


def cohen_kappa(first: list[str], second: list[str]) -> float | None:
    """(p_o - p_e) / (1 - p_e); None when chance agreement is total (both always said the same thing)."""
    n = len(first)
    if n == 0:
        return None
    p_o = sum(x == y for x, y in zip(first, second)) / n
    c1, c2 = Counter(first), Counter(second)
    p_e = sum(c1[c] * c2[c] for c in c1) / n**2
    return None if p_e >= 1 else (p_o - p_e) / (1 - p_e)


def krippendorff_alpha(units: list[list[str]]) -> float | None:
    """Nominal alpha = 1 - D_o / D_e from the coincidence matrix; units with one vote carry nothing."""
    coincide: Counter = Counter()
    for values in units:
        m = len(values)
        if m < 2:
            continue
        for i, j in ((i, j) for i in range(m) for j in range(m) if i != j):
            coincide[values[i], values[j]] += 1 / (m - 1)
    n_c: Counter = Counter()
    for (c, _), w in coincide.items():
        n_c[c] += w
    n = sum(n_c.values())
    observed = sum(w for (c, k), w in coincide.items() if c != k)
    expected = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k) / (n - 1) if n > 1 else 0
    return None if expected == 0 else 1 - observed / expected


def agreement_with_others(
    item_votes: dict[str, dict[str, str]], ignore: set[str] | frozenset = frozenset()
) -> dict[str, tuple[float | None, int]]:
    """assessor -> (mean kappa with each other assessor, weighted by shared items; shared items).

    Agreement with an assessor in `ignore` (already flagged for another reason) does not count for
    the others: one careless assessor must not drag the careful ones below the threshold."""
    shared: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for by in item_votes.values():
        for a, b in combinations(sorted(by), 2):
            shared[a, b].append((by[a], by[b]))
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # weighted kappa sum, weight
    counts: Counter = Counter()
    for (a, b), pairs in shared.items():
        kappa = cohen_kappa([p[0] for p in pairs], [p[1] for p in pairs])
        for who, other in ((a, b), (b, a)):
            if other in ignore:
                continue
            counts[who] += len(pairs)
            if kappa is not None:
                totals[who][0] += kappa * len(pairs)
                totals[who][1] += len(pairs)
    return {who: (totals[who][0] / totals[who][1] if totals[who][1] else None, counts[who]) for who in counts}


def majority(by: dict[str, str], weights: dict[str, float] | None = None) -> tuple[str | None, float]:
    """(the winner with the most weight, its share of the weight); None when the top is shared."""
    score: Counter = Counter()
    for who, winner in by.items():
        score[winner] += 1.0 if weights is None else weights.get(who, 1.0)
    total = sum(score.values())
    ranked = score.most_common()
    if not ranked or total <= 0:
        return None, 0.0
    if len(ranked) > 1 and abs(ranked[0][1] - ranked[1][1]) < 1e-12:
        return None, ranked[0][1] / total
    return ranked[0][0], ranked[0][1] / total


def _reaches(edges: set[tuple[str, str]], start: str, goal: str) -> bool:
    todo, seen = [start], {start}
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        for x, y in edges:
            if x == node and y not in seen:
                seen.add(y)
                todo.append(y)
    return False


def cycle_edges(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Edges (winner, loser) that lie on a cycle: the loser reaches the winner again."""
    return {(x, y) for x, y in edges if _reaches(edges, y, x)}


def intransitive_triples(edges: set[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(x, y, z) with x > y, y > z and z > x, each listed once, smallest name first."""
    found = set()
    for x, y in edges:
        for y2, z in edges:
            if y2 == y and (z, x) in edges:
                rot = min((x, y, z), (y, z, x), (z, x, y))
                found.add(rot)
    return sorted(found)


def preference_graphs(labels: list[Label], item_votes: dict[str, dict[str, str]]) -> dict[str, set]:
    """prompt -> majority edges (winning system, losing system) of its decided items."""
    meta = {lb.item: lb for lb in labels}
    graphs: dict[str, set] = defaultdict(set)
    for item, by in item_votes.items():
        winner, _ = majority(by)
        lb = meta[item]
        if winner == "a":
            graphs[lb.prompt].add((lb.system_a, lb.system_b))
        elif winner == "b":
            graphs[lb.prompt].add((lb.system_b, lb.system_a))
    return dict(graphs)


def assessor_stats(
    labels: list[Label], item_votes: dict, th: Thresholds, idle_cap: float = 300.0
) -> list[dict]:
    """One row per assessor with every statistic and the reasons it is flagged (if any)."""
    mine: dict[str, list[Label]] = defaultdict(list)
    for lb in labels:
        mine[lb.assessor].append(lb)
    rows = []
    for who in sorted(mine):
        own = mine[who]
        acc, n_gold = honeypot_accuracy(own)
        cons, n_rep = self_consistency(own)
        bias, n_picks = position_bias(own)
        flags = []
        if acc is not None and n_gold >= th.min_evidence and acc < th.honeypot_accuracy:
            flags.append(f"honeypot accuracy {acc:.2f} < {th.honeypot_accuracy}")
        if cons is not None and n_rep >= th.min_evidence and cons < th.self_consistency:
            flags.append(f"self-consistency {cons:.2f} < {th.self_consistency}")
        if bias is not None and n_picks >= th.min_evidence and max(bias, 1 - bias) > th.position_bias:
            flags.append(f"position bias {bias:.2f} outside [{1 - th.position_bias:.2f}, {th.position_bias}]")
        rows.append(
            {
                "assessor": who,
                "labels": len(own),
                "honeypot_accuracy": acc,
                "honeypots": n_gold,
                "self_consistency": cons,
                "repeats": n_rep,
                "position_bias": bias,
                "side_picks": n_picks,
                "agreement_kappa": None,
                "shared_items": 0,
                "labels_per_hour": labels_per_hour(own, idle_cap),
                "flags": flags,
            }
        )
    # second pass: agreement, not counting partners the first pass flagged
    agree = agreement_with_others(item_votes, ignore={r["assessor"] for r in rows if r["flags"]})
    for row in rows:
        kappa, n_shared = agree.get(row["assessor"], (None, 0))
        row["agreement_kappa"], row["shared_items"] = kappa, n_shared
        if kappa is not None and n_shared >= th.min_evidence and kappa < th.agreement:
            row["flags"].append(f"agreement (kappa) {kappa:.2f} < {th.agreement}")
    return rows


def summarize(labels: list[Label], th: Thresholds, idle_cap: float = 300.0) -> dict:
    """Everything `tunelab label stats` prints, as one JSON-ready dict."""
    regular = [lb for lb in labels if lb.gold is None]
    item_votes = votes(regular)
    meta = {lb.item: lb for lb in regular}
    items = []
    for item, by in sorted(item_votes.items()):
        winner, top = majority(by)
        lb = meta[item]
        items.append(
            {
                "item": item,
                "prompt": lb.prompt,
                "systems": [lb.system_a, lb.system_b],  # majority "a" = the first
                "votes": len(by),
                "majority": winner,
                "agreement": top,
            }
        )
    prompts = []
    for prompt, edges in sorted(preference_graphs(regular, item_votes).items()):
        on_cycle = cycle_edges(edges)
        if on_cycle:
            prompts.append(
                {
                    "prompt": prompt,
                    "cycle_edges": sorted(on_cycle),
                    "intransitive_triples": intransitive_triples(edges),
                }
            )
    assessors = assessor_stats(labels, item_votes, th, idle_cap)
    flagged = {a["assessor"] for a in assessors if a["flags"]}
    kept = [[v for who, v in by.items() if who not in flagged] for by in item_votes.values()]
    return {
        "labels": len(labels),
        "assessors": assessors,
        "flagged": [a["assessor"] for a in assessors if a["flags"]],
        "krippendorff_alpha": krippendorff_alpha([list(by.values()) for by in item_votes.values()]),
        "krippendorff_alpha_unflagged": krippendorff_alpha(kept),
        "items": items,
        "cyclic_prompts": prompts,
    }
