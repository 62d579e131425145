"""`tunelab data check|stats`: every problem of a data file at once, then what training would see.

    tunelab data check train.jsonl --kind pairs --model smollm2-135m --max-len 512

The summary: rows, tokens, a length histogram, how many rows the over-long policy would drop or
truncate, and one rendered example with the trained tokens marked [[like this]].
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from tunelab.console import plain
from tunelab.data.read import check_dataset
from tunelab.data.render import IGNORE, RenderOptions, Tokenized, fit_length, render_row
from tunelab.errors import Problem


@dataclass
class DataReport:
    path: str
    kind: str
    n_rows: int
    problems: list[Problem]
    lengths: list[int] = field(
        default_factory=list
    )  # tokens per rendered row (or characters without a model)
    unit: str = "characters"
    trained_tokens: int = 0
    n_dropped: int = 0
    n_truncated: int = 0
    example: str | None = None


def _row_text(row: dict) -> str:
    """Plain text of a row, for lengths when no tokenizer is given."""
    parts = []
    for value in row.values():
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts += [m.get("content", "") for m in value if isinstance(m, dict)]
    return "".join(parts)


def _render_for_stats(tok, row: dict, kind: str, opts: RenderOptions) -> Tokenized | None:
    if kind in ("text", "pairs", "chat"):
        return render_row(tok, row, opts)
    ids = tok(_row_text(row), add_special_tokens=False)["input_ids"]
    return Tokenized(ids, [IGNORE] * len(ids))


def marked(tok, item: Tokenized) -> str:
    """The rendered row with trained tokens wrapped in [[ ]]."""
    out, run, trained = [], [], False
    for token_id, label in zip(item.input_ids, item.labels):
        is_trained = label != IGNORE
        if is_trained != trained and run:
            text = tok.decode(run)
            out.append(f"[[{text}]]" if trained else text)
            run = []
        run.append(token_id)
        trained = is_trained
    if run:
        text = tok.decode(run)
        out.append(f"[[{text}]]" if trained else text)
    return "".join(out)


def build_report(
    path: str,
    kind: str,
    get_tok=None,
    max_len: int = 1024,
    overlong: str = "truncate",
    opts: RenderOptions | None = None,
) -> DataReport:
    """`get_tok()` is called only once the file has been read: bad input fails before a tokenizer loads."""
    opts = opts or RenderOptions()
    rows, problems = check_dataset(path, kind)
    report = DataReport(path, kind, len(rows), problems)
    tok = get_tok() if get_tok is not None and rows else None
    if tok is None or kind == "judgments":
        report.lengths = [len(_row_text(r)) for r in rows]
        return report
    report.unit = "tokens"
    for row in rows:
        item = _render_for_stats(tok, row, kind, opts)
        report.lengths.append(len(item.input_ids))
        fitted = fit_length(item, max_len, overlong) if kind in ("text", "pairs", "chat") else item
        if fitted is None:
            report.n_dropped += 1
            continue
        report.n_truncated += len(fitted.input_ids) < len(item.input_ids)
        report.trained_tokens += fitted.n_trained
        if report.example is None and fitted.n_trained:
            report.example = marked(tok, fitted)
    return report


def histogram(lengths: list[int], bins: int = 8, width: int = 40) -> list[str]:
    if not lengths:
        return []
    lo, hi = min(lengths), max(lengths)
    step = max(1, -(-(hi - lo + 1) // bins))
    counts = Counter((n - lo) // step for n in lengths)
    top = max(counts.values())
    lines = []
    for b in range(-(-(hi - lo + 1) // step)):
        c = counts.get(b, 0)
        lines.append(
            f"{lo + b * step:>7}-{lo + (b + 1) * step - 1:<7} {'#' * max(c and 1, round(width * c / top)):<{width}} {c}"
        )
    return lines


def print_report(
    report: DataReport, console: Console, max_len: int, overlong: str, show_problems: bool = True
) -> None:
    if show_problems and report.problems:
        console.print(f"[bold red]{len(report.problems)} problem(s) in {plain(report.path)}:[/bold red]")
        for p in report.problems:
            console.print(f"  {p}", markup=False, highlight=False, soft_wrap=True)
        console.print()
    table = Table(title=f"{report.path} as kind '{report.kind}'", show_header=False)
    table.add_row("rows ok", str(report.n_rows))
    table.add_row("rows with problems", str(len({(p.line) for p in report.problems if p.line is not None})))
    if report.lengths:
        n = len(report.lengths)
        table.add_row(
            report.unit,
            f"{sum(report.lengths)} total, mean {sum(report.lengths) / n:.0f}, max {max(report.lengths)}",
        )
    if report.unit == "tokens" and report.kind in ("text", "pairs", "chat"):
        table.add_row("trained tokens", str(report.trained_tokens))
        over = sum(n > max_len for n in report.lengths)
        table.add_row(
            f"rows over max_len={max_len}",
            f"{over} ({overlong}: {report.n_dropped} dropped, {report.n_truncated} truncated)",
        )
    console.print(table)
    if report.lengths:
        console.print(f"length histogram ({report.unit} per row):")
        for line in histogram(report.lengths):
            console.print("  " + line, markup=False, highlight=False)
    if report.example is not None:
        console.print("\none rendered example, trained tokens in [[ ]]:")
        console.print(report.example, markup=False, highlight=False)
