"""LLM-as-judge for open-ended answers: a pairwise comparison asked in both orders.

    verdicts = pairwise(judge_lm, [(prompt, answer_a, answer_b), ...])
    summarize(verdicts)   # {"a": wins, "b": wins, "tie": n, "agreement": ..., "first_slot_rate": ...}

Judges prefer whatever stands in the first slot more often than they should, so every pair is shown
twice, A/B and B/A. A verdict counts only when both orders pick the same answer; otherwise it is a tie.
`first_slot_rate` is how often a pick went to the first slot (0.5 = no position bias).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunelab.prompting.lm import LM, user

RUBRIC = (
    "You compare two answers to the same request. The better answer is honest (correct, nothing made "
    "up), harmless, and helpful (it does what was asked, in the requested format)."
)
PICK = re.compile(r"\b([AB])\b")


def judge_prompt(prompt: str, first: str, second: str, rubric: str = RUBRIC) -> str:
    return (
        f"{rubric}\n\nRequest:\n{prompt}\n\nAnswer A:\n{first}\n\nAnswer B:\n{second}\n\n"
        "Which answer is better? Reply with one letter: A or B."
    )


def parse_pick(text: str) -> str | None:
    """'A' or 'B' (the first standalone one in the reply), None when the judge gave neither."""
    found = PICK.search(text.strip().upper())
    return found.group(1) if found else None


@dataclass
class Verdict:
    winner: str  # "a" | "b" | "tie"
    a_first: str | None  # the pick with a in slot A
    b_first: str | None  # the pick with b in slot A


def combine(a_first: str | None, b_first: str | None) -> str:
    """Both orders must agree: A then B means a wins; B then A means b wins; anything else is a tie."""
    if a_first == "A" and b_first == "B":
        return "a"
    if a_first == "B" and b_first == "A":
        return "b"
    return "tie"


def pairwise(
    lm: LM, items: list[tuple[str, str, str]], rubric: str = RUBRIC, max_new_tokens: int = 8
) -> list[Verdict]:
    """One verdict per (prompt, a, b), from two batched calls (a first, then b first)."""
    asked = [[user(judge_prompt(p, a, b, rubric))] for p, a, b in items]
    swapped = [[user(judge_prompt(p, b, a, rubric))] for p, a, b in items]
    replies = lm.complete(asked + swapped, max_new_tokens=max_new_tokens)
    picks = [parse_pick(r.text) for r in replies]
    n = len(items)
    return [Verdict(combine(picks[i], picks[n + i]), picks[i], picks[n + i]) for i in range(n)]


def summarize(verdicts: list[Verdict]) -> dict:
    picks = [p for v in verdicts for p in (v.a_first, v.b_first) if p is not None]
    n = len(verdicts)
    return {
        "n": n,
        "a": sum(v.winner == "a" for v in verdicts),
        "b": sum(v.winner == "b" for v in verdicts),
        "tie": sum(v.winner == "tie" for v in verdicts),
        "agreement": sum(v.winner != "tie" for v in verdicts) / n if n else float("nan"),
        "first_slot_rate": sum(p == "A" for p in picks) / len(picks) if picks else float("nan"),
        "unparsed": 2 * n - len(picks),
    }
