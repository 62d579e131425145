"""Which share of n consecutive units a process takes: plain arithmetic that data sources and the
distributed layer (train/dist.py) both use."""

from __future__ import annotations


def share(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of rank's share of n consecutive units: the first ranks take one more when n does
    not divide evenly."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)
