"""Few-shot examples: which to show, and how many fit the context window.

    shots = choose_shots(task.train, row, k=4, how="similar", prompt_of=task.prompt, seed=0)
    conversation, used = fit_shots(lm.count, build, shots, budget=2048 - 64)

Examples are whole: when the prompt would not fit, the least relevant example is dropped (never cut),
and a question that does not fit on its own is an error, not a silent truncation.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable

from tunelab.errors import TunelabError

WORD = re.compile(r"\w+")


def _bag(text: str) -> Counter:
    return Counter(w.lower() for w in WORD.findall(text))


def cosine(a: Counter, b: Counter) -> float:
    dot = sum(a[w] * b[w] for w in a.keys() & b.keys())
    norm = math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values()))
    return dot / norm if norm else 0.0


def choose_shots(
    pool: list[dict],
    row: dict,
    *,
    k: int,
    how: str,
    prompt_of: Callable[[dict], str],
    seed: int = 0,
) -> list[dict]:
    """Up to k examples from the pool, most relevant first; the question itself is never among them.

    how: fixed (the pool's first k), random (seeded per question), similar (word-count cosine).
    """
    question = prompt_of(row)
    candidates = [r for r in pool if prompt_of(r) != question]
    if how == "fixed":
        return candidates[:k]
    if how == "random":
        rng = random.Random(f"{seed}:{question}")  # the same question gets the same examples every run
        return rng.sample(candidates, min(k, len(candidates)))
    if how == "similar":
        target = _bag(question)
        scored = sorted(candidates, key=lambda r: -cosine(_bag(prompt_of(r)), target))
        return scored[:k]
    raise TunelabError(f"Unknown few-shot selection '{how}': use fixed, random or similar.")


def fit_shots(
    count: Callable[[list], int], build: Callable[[list[dict]], list], shots: list[dict], budget: int
) -> tuple[list, int]:
    """The conversation with as many whole examples as fit `budget` prompt tokens, and that number.

    `build(shots)` makes the conversation; the least relevant (last) example goes first.
    """
    for used in range(len(shots), -1, -1):
        conversation = build(shots[:used])
        needed = count(conversation)
        if needed <= budget:
            return conversation, used
    raise TunelabError(
        f"The context is too small for even the question: its prompt needs {needed} tokens, and "
        f"{budget} are left once room for the answer is kept. Raise prompting.max_context (or the "
        "model's context), lower the answer length, or shorten the template."
    )
