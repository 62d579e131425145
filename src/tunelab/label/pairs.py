"""The items to compare: pairs of answers from a pairs JSONL (or sampled from models), and honeypots.

    items = load_items(project)          # every pair of answers to compare, honeypots included

A pairs row is `{prompt, answers: [{system, text}, ...]}` with two or more answers; every pair of its
answers becomes one item. Honeypots are preference rows `{prompt, chosen, rejected}`: chosen is gold.
A bad row names the file, the line and the field; all problems are reported at once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from tunelab.errors import DataError, Problem, TunelabError
from tunelab.label.project import Project


@dataclass(frozen=True)
class Item:
    """One comparison: two answers to one prompt. `gold` is 'a' for honeypots (a = the right answer)."""

    key: str
    prompt: str
    system_a: str
    text_a: str
    system_b: str
    text_b: str
    gold: str | None = None
    source: str = ""  # file:line, for messages


# ---------------------------------------------------------------- the pairs file


def _key(*parts: str) -> str:
    return hashlib.sha1(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:16]


def _pair_items(row: dict, source: str) -> list[Item]:
    """Items from one pairs row; raises RowError naming the field."""
    from tunelab.data.read import RowError

    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RowError("prompt", f"expected non-empty text; the row has {sorted(row)}")
    answers = row.get("answers")
    if not isinstance(answers, list) or len(answers) < 2:
        raise RowError("answers", "expected a list of 2 or more {system, text} objects")
    seen: set[str] = set()
    for i, ans in enumerate(answers):
        if not isinstance(ans, dict):
            raise RowError(f"answers[{i}]", f"expected {{system, text}}, got {type(ans).__name__}")
        for field in ("system", "text"):
            if not isinstance(ans.get(field), str) or not ans[field].strip():
                raise RowError(f"answers[{i}].{field}", "expected non-empty text")
        if ans["system"] in seen:
            raise RowError(f"answers[{i}].system", f"{ans['system']!r} appears twice in this row")
        seen.add(ans["system"])
    return [
        Item(
            _key(prompt, a["system"], a["text"], b["system"], b["text"]),
            prompt,
            a["system"],
            a["text"],
            b["system"],
            b["text"],
            None,
            source,
        )
        for a, b in combinations(answers, 2)
    ]


def read_pairs(path: str | Path) -> list[Item]:
    """Every pair of answers in a pairs JSONL; all problems reported at once (file:line: field)."""
    from tunelab.data.read import RowError, records

    items: list[Item] = []
    problems: list[Problem] = []
    n_ok = 0
    for line, record in records(path):
        if isinstance(record, Problem):
            problems.append(record)
            continue
        try:
            items += _pair_items(record, f"{path}:{line}")
            n_ok += 1
        except RowError as err:
            problems.append(Problem(str(path), line, err.field, err.message))
    if problems or not items:
        problems = problems or [Problem(str(path), None, None, "has no rows")]
        raise DataError(
            problems, n_ok, hint="a row is {prompt, answers: [{system, text}, {system, text}, ...]}"
        )
    return _unique(items)


def read_honeypots(path: str | Path) -> list[Item]:
    """Gold items from preference rows: `chosen` is the answer an assessor should prefer."""
    from tunelab.data.read import read_dataset

    items = []
    for i, row in enumerate(read_dataset(path, "preference"), 1):
        if not all(isinstance(row[f], str) for f in ("prompt", "chosen", "rejected")):
            raise DataError([Problem(str(path), i, "prompt", "honeypots are plain text, not chats")])
        key = "h" + _key(row["prompt"], row["chosen"], row["rejected"])[1:]
        items.append(
            Item(
                key,
                row["prompt"],
                "gold-chosen",
                row["chosen"],
                "gold-rejected",
                row["rejected"],
                "a",
                f"{path}:{i}",
            )
        )
    return _unique(items)


def _unique(items: list[Item]) -> list[Item]:
    first: dict[str, Item] = {}
    for it in items:
        if it.key in first:
            raise DataError(
                [
                    Problem(
                        it.source.rsplit(":", 1)[0],
                        int(it.source.rsplit(":", 1)[1]),
                        None,
                        f"repeats the pair of {first[it.key].source}",
                    )
                ]
            )
        first[it.key] = it
    return items


def load_items(project: Project) -> list[Item]:
    """The project's pairs (sampled from models first, if asked and not done yet), then its honeypots."""
    if project.cfg.sample is not None:
        from tunelab.label.sample import sample_pairs

        sample_pairs(project)
    items = read_pairs(project.resolve(project.cfg.pairs))
    if project.cfg.honeypots:
        items += read_honeypots(project.resolve(project.cfg.honeypots))
    elif "honeypot_share" in project.cfg.model_fields_set and project.cfg.honeypot_share > 0:
        raise TunelabError(
            f"{project.path}: 'honeypot_share' is {project.cfg.honeypot_share} but no 'honeypots' file is set."
        )
    return items
