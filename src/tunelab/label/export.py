"""Labels -> preference pairs for `tunelab rm` and `tunelab dpo` (prompt, chosen, rejected, weight).

    rows, dropped = build_preferences(store.labels(), store.items(), project.cfg)

What is used: each unflagged assessor's first label of each regular item (honeypots measure the
assessors, repeats their consistency; neither is a vote). Each vote counts with the assessor's
reliability: the Laplace-smoothed honeypot accuracy times the smoothed self-consistency, (hits + 1) /
(n + 2) each, a missing measure counting 1. The majority is the answer with the most reliability;

    weight = (reliability behind the majority / all reliability) x (mean reliability of the majority)

so a split vote or unreliable voters give a small weight. Items below `export.min_agreement`, and pairs
on a preference cycle of their prompt, are dropped or multiplied by `export.downweight` (configurable).
A majority of 'tie' or 'both bad' says nothing about which answer is better: the item is dropped.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from tunelab.label.pairs import Item
from tunelab.label.project import ExportSection, ProjectConfig
from tunelab.label.stats import (
    Label,
    cycle_edges,
    honeypot_accuracy,
    majority,
    self_consistency,
    summarize,
    votes,
)


def reliability(labels: list[Label]) -> float:
    """Smoothed honeypot accuracy x smoothed self-consistency of one assessor's labels."""
    out = 1.0
    for measure in (honeypot_accuracy, self_consistency):
        value, n = measure(labels)
        if n:
            out *= (value * n + 1) / (n + 2)
    return out


def _usable(labels: list[Label], flagged: set[str], dropped: Counter) -> list[Label]:
    """The labels that are votes: no honeypots, no repeats, no flagged assessors (each counted)."""
    usable = []
    for lb in labels:
        if lb.gold is not None:
            dropped["honeypot labels (measure assessors only)"] += 1
        elif lb.assessor in flagged:
            dropped[f"labels of flagged assessor {lb.assessor}"] += 1
        elif lb.repeat_of is not None:
            dropped["repeat labels (measure consistency only)"] += 1
        else:
            usable.append(lb)
    return usable


def _decide(by: dict[str, str], rel: dict[str, float], opts: ExportSection, dropped: Counter):
    """(winner, weight, agreement) of one item's votes, or None when it is dropped (and counted)."""
    if len(by) < opts.min_votes:
        dropped[f"fewer than {opts.min_votes} votes"] += 1
        return None
    winner, agreement = majority(by, rel)
    if winner is None:
        dropped["split vote (no majority)"] += 1
        return None
    if winner in ("tie", "both_bad"):
        dropped[f"majority {'tie' if winner == 'tie' else 'both bad'}"] += 1
        return None
    behind = [rel[who] for who, v in by.items() if v == winner]
    weight = agreement * sum(behind) / len(behind)
    if agreement < opts.min_agreement:
        if opts.low_agreement == "drop":
            dropped[f"agreement below {opts.min_agreement}"] += 1
            return None
        dropped[f"down-weighted: agreement below {opts.min_agreement} (kept)"] += 1
        weight *= opts.downweight
    return winner, weight, agreement


def build_preferences(
    labels: list[Label], items: dict[str, Item], cfg: ProjectConfig
) -> tuple[list[dict], Counter]:
    """Preference rows, and a count of what was left out and why."""
    opts = cfg.export
    dropped: Counter = Counter()
    per_assessor: dict[str, list[Label]] = defaultdict(list)
    for lb in labels:
        per_assessor[lb.assessor].append(lb)
    reliable = {who: reliability(own) for who, own in per_assessor.items()}
    flagged = set(summarize(labels, cfg.thresholds)["flagged"])
    decided = []  # (item, winner, weight, agreement, votes)
    for key, by in sorted(votes(_usable(labels, flagged, dropped)).items()):
        outcome = _decide(by, {who: reliable[who] for who in by}, opts, dropped)
        if outcome is not None:
            decided.append((items[key], *outcome, len(by)))

    graphs: dict[str, set] = defaultdict(set)
    for item, winner, *_ in decided:
        graphs[item.prompt].add(_edge(item, winner))
    on_cycle = {prompt: cycle_edges(edges) for prompt, edges in graphs.items()}
    rows = []
    for item, winner, weight, agreement, n in decided:
        if _edge(item, winner) in on_cycle[item.prompt]:
            if opts.cyclic == "drop":
                dropped["on a preference cycle"] += 1
                continue
            dropped["down-weighted: on a preference cycle (kept)"] += 1
            weight *= opts.downweight
        chosen, rejected = ("a", "b") if winner == "a" else ("b", "a")
        rows.append(
            {
                "prompt": item.prompt,
                "chosen": getattr(item, f"text_{chosen}"),
                "rejected": getattr(item, f"text_{rejected}"),
                "weight": round(weight, 6),
                "chosen_system": getattr(item, f"system_{chosen}"),
                "rejected_system": getattr(item, f"system_{rejected}"),
                "votes": n,
                "agreement": round(agreement, 6),
            }
        )
    return rows, dropped


def _edge(item: Item, winner: str) -> tuple[str, str]:
    return (item.system_a, item.system_b) if winner == "a" else (item.system_b, item.system_a)


def judgments(labels: list[Label], flagged: set[str]) -> list[dict]:
    """Every usable vote as a FastChat battle row (model_a = the left answer's system) for `tunelab arena`."""
    out = []
    for lb in labels:
        if lb.gold is not None or lb.assessor in flagged or lb.repeat_of is not None:
            continue
        left, right = (lb.system_a, lb.system_b) if lb.left == "a" else (lb.system_b, lb.system_a)
        winner = {"left": "model_a", "right": "model_b", "tie": "tie", "both_bad": "tie (bothbad)"}[lb.choice]
        out.append(
            {"model_a": left, "model_b": right, "winner": winner, "judge": lb.assessor, "prompt": lb.prompt}
        )
    return out
