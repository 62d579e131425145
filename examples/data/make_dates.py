"""Write the date-normalisation task's data: a sentence with a date in it -> the date as YYYY-MM-DD.

    python examples/data/make_dates.py      # writes dates_train.jsonl (300 rows) and dates_eval.jsonl (60)

The second task of the ladder (examples/tasks/dates.yaml): a different X -> Y job that needs no code.
"""

import json
import random
from pathlib import Path

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]  # fmt: skip
EVENTS = ["The meeting was moved to", "Her flight leaves on", "The invoice is due", "We signed the lease on",
          "The concert takes place on", "His birthday party is on", "The office reopens on",
          "The report was filed on"]  # fmt: skip


def ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def sentence(rng: random.Random, year: int, month: int, day: int) -> str:
    name = MONTHS[month - 1]
    forms = [
        f"{name} {day}, {year}",
        f"{ordinal(day)} of {name} {year}",
        f"{day} {name} {year}",
        f"{name[:3]}. {ordinal(day)}, {year}",
    ]
    return f"{rng.choice(EVENTS)} {rng.choice(forms)}."


def rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        year, month, day = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
        out.append({"text": sentence(rng, year, month, day), "answer": f"{year}-{month:02d}-{day:02d}"})
    return out


if __name__ == "__main__":
    here = Path(__file__).parent
    train, held_out = rows(300, seed=0), rows(60, seed=1)
    for name, data in (("dates_train.jsonl", train), ("dates_eval.jsonl", held_out)):
        (here / name).write_text("".join(json.dumps(r) + "\n" for r in data))
