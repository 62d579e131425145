"""Rich consoles for tables: as wide as the terminal, or 160 columns when writing to a file or pipe
(rich's default of 80 would wrap every wide table into unreadable cells).

Tables show the user's text (prompts, file names, model names), so their console reads no markup:
`[/INST]` prints as itself instead of crashing rich, and `[link=...]` does not become a hidden link.
Where a message mixes tunelab's own markup with user text, pass the user's part through `plain()`."""

from __future__ import annotations


def table_console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr, markup=False, highlight=False)
    return (
        console if console.is_terminal else Console(stderr=stderr, width=160, markup=False, highlight=False)
    )


def table(title: str | None, columns, left=()):
    """A rich Table with these columns: numbers (right-aligned), but for the text columns named in `left`."""
    from rich.table import Table

    out = Table(title=title)
    for col in columns:
        out.add_column(col, justify="left" if col in left else "right")
    return out


def plain(text: object) -> str:
    """User text made safe inside a rich markup string: brackets are escaped, so nothing is interpreted."""
    from rich.markup import escape

    return escape(str(text))


def progress_bar(console, *fields):
    """The one progress display: description, bar, done/total, any extra columns, elapsed, ETA.

    Silent when the console is not a terminal (logs and pipes get the per-step lines instead)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *(TextColumn(f) for f in fields),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
