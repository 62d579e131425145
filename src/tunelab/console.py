"""Rich consoles for tables: as wide as the terminal, or 160 columns when writing to a file or pipe
(rich's default of 80 would wrap every wide table into unreadable cells)."""

from __future__ import annotations


def table_console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=160)
