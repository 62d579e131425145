"""Errors meant for the user: one paragraph, no traceback.

Anything the user can fix (a missing file, a bad row, an unknown config key) raises a
`TunelabError`; the command line prints its message and exits with status 2. Everything else is a
bug in tunelab and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class TunelabError(Exception):
    """A problem the user can fix; `str(err)` is the whole message."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one row of one file."""

    file: str
    line: int | None  # 1-based line (JSONL) or row (other formats); None for the whole file
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        field = f" field '{self.field}':" if self.field else ""
        return f"{where}:{field} {self.message}"


class DataError(TunelabError):
    """Bad input data: carries every problem found and how many rows were fine."""

    def __init__(self, problems: list[Problem], n_ok: int = 0, hint: str | None = None, show: int = 5):
        self.problems = problems
        self.n_ok = n_ok
        lines = [str(p) for p in problems[:show]]
        more = len(problems) - show
        if more > 0:
            lines.append(f"... and {more} more problem(s)")
        text = "\n  ".join(lines)
        tail = [f"{n_ok} row(s) were fine."] if problems and problems[0].line is not None else []
        if hint:
            tail.append(f"Hint: {hint}")
        head = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
        super().__init__(f"{head} in the data:\n  {text}" + ("\n" + " ".join(tail) if tail else ""))
