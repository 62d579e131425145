"""The training process itself: signals (Ctrl-C / SIGTERM) and memory.

The loop asks this module to stop cleanly on a signal and to give freed memory back after each step.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys

import torch


class Stop:
    """First Ctrl-C / SIGTERM: finish the step, save, exit cleanly. Second Ctrl-C: exit at once."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        if threading_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            os._exit(130)
        self.requested = True
        print(
            "\nstopping after this step (a checkpoint will be saved); press Ctrl-C again to quit at once",
            file=sys.stderr,
        )

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


_TRIM = _malloc_trim() if sys.platform.startswith("linux") else None

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
LARGE_BLOCK = 1 << 20  # 1 MiB: from this size on, each block gets its own mapping


def unpool_large_blocks() -> bool:
    """From now on every allocation of LARGE_BLOCK or more is a mapping of its own, returned to the OS
    when the tensor is freed, instead of coming from (and going back to) glibc's heap. True when set.

    glibc raises its mmap threshold to the size of every mapped block freed, up to 32 MiB, so a model's
    per-layer tensors (a few MiB each under FSDP) come from the heap, and what a step frees there stays
    with the process: under FSDP2 on 2 CPU processes (1.5 GB of fp32 weights) each rank held 1.6 GB
    more than it had allocated in backward, a third of its peak. A fixed threshold turns off that
    adjustment. The price is page faults on each new large tensor (more system time per step), so
    only runs that are sharded to save memory ask for it (train/dist.py)."""
    if not sys.platform.startswith("linux") or torch.cuda.is_available():
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK))


def resident_bytes() -> int:
    """Memory the process holds now (Linux; 0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class FreedMemory:
    """Give the steps' freed activations back to the OS (glibc keeps them otherwise) when the process
    holds more at rest, after a step, than its peak before that step: memory it never needed at once.

    On CPU, glibc's allocator holds on to freed blocks of every shape a step used, so resident memory
    grew by ~400 MB per step on SmolLM2 until the machine ran out; trimming keeps it near the real peak.
    Trimming after every step cost the next step re-faulting all of it: 3.5-4.3 s of system time in a
    reward-model step of ~30 s (16 answers of <= 283 tokens), while the memory held without trimming
    stayed flat over 6 steps. A fixed growth allowance (10% over the level after a step) still trimmed
    every 2-3 steps, the level moving that much with each batch's shapes. Against the earlier peak, memory
    is returned while the peak is being set (the first steps, a longer batch) and whenever it grows.
    """

    def __init__(self):
        self.peak: int | None = None  # the process's peak resident memory when the last step ended

    def release(self) -> bool:
        """Called after every optimizer step; True when it trimmed."""
        if _TRIM is None or torch.cuda.is_available():
            return False
        held = resident_bytes()
        peak_before, self.peak = self.peak, peak_bytes()
        if peak_before is None or held <= peak_before:
            return False
        _TRIM(0)
        return True


_FREED = FreedMemory()


def release_freed_memory() -> None:
    """After each optimizer step: return freed memory to the OS when the process has grown (FreedMemory)."""
    _FREED.release()


def release_all_freed_memory() -> None:
    """When training ends: what the steps kept for reuse would otherwise stay with the process through
    saving, evaluation and whatever the caller does next."""
    if _TRIM is not None and not torch.cuda.is_available():
        _TRIM(0)


def peak_bytes() -> int:
    """The process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
