"""Tasks that ship with tunelab, so that `tunelab eval task=extract` works with no files at all.

from tunelab.tasks.builtin import BUILTIN
task = BUILTIN["extract"]()
"""

from __future__ import annotations

from tunelab.tasks import extract
from tunelab.tasks.base import Task


def extract_task() -> Task:
    """Product notes -> one line of JSON with name, price, color; 400 training rows, 100 held out."""
    train = extract.make_rows(400, seed=0)
    seen = {r["prompt"] for r in train}
    held_out = [r for r in extract.make_rows(130, seed=1) if r["prompt"] not in seen][:100]
    return Task(
        name="extract",
        train=[{**r, "answer": r["completion"]} for r in train],
        eval=[{**r, "answer": r["completion"]} for r in held_out],
        rules=extract.RULES,
        extract="json",
        metrics=["json", "rouge_l"],
        max_new_tokens=48,
    )


def capitals() -> Task:
    from tunelab.tasks.retention import capitals_task

    return capitals_task()


BUILTIN = {"extract": extract_task, "capitals": capitals}
