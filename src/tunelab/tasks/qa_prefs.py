"""Preference pairs that need no labeller: correct vs wrong answers to simple questions.

    rows = make_rows(300, seed=0)   # [{"prompt", "chosen", "rejected"}]

Used to show that a reward model learns something real from pairs (the wrong answer is plausible:
another number, another capital, a wrong opposite).
"""

from __future__ import annotations

import random

CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Canada": "Ottawa",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Norway": "Oslo",
    "Greece": "Athens",
    "Poland": "Warsaw",
    "Chile": "Santiago",
    "India": "New Delhi",
    "Cuba": "Havana",
}
OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "up": "down",
    "fast": "slow",
    "day": "night",
    "old": "new",
    "happy": "sad",
    "open": "closed",
    "light": "dark",
    "early": "late",
    "full": "empty",
    "wet": "dry",
}


def _question(rng: random.Random) -> tuple[str, str, str]:
    kind = rng.choice(["sum", "capital", "opposite"])
    if kind == "sum":
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        wrong = a + b + rng.choice([-3, -2, -1, 1, 2, 3])
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", f"{a} plus {b} is {wrong}."
    table, what = (CAPITALS, "capital") if kind == "capital" else (OPPOSITES, "opposite")
    key = rng.choice(sorted(table))
    other = rng.choice([v for k, v in sorted(table.items()) if k != key])
    return (
        f"What is the {what} of {key}?",
        f"The {what} of {key} is {table[key]}.",
        f"The {what} of {key} is {other}.",
    )


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, right, wrong = _question(rng)
        rows.append({"prompt": prompt, "chosen": right, "rejected": wrong})
    return rows
