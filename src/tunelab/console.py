"""Rich consoles for tables: as wide as the terminal, or 160 columns when writing to a file or pipe
(rich's default of 80 would wrap every wide table into unreadable cells)."""

from __future__ import annotations


def table_console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=160)


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
