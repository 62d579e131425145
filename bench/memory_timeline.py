"""By-hand diagnosis: where a training process's memory peak comes from, phase by phase.

    torchrun --standalone --nproc_per_node 2 bench/memory_timeline.py sft model=DIR adapter=none distributed=fsdp ...
    python bench/memory_timeline.py sft model=DIR adapter=none ...          # the one-process run

Runs `tunelab ARGS` in this process with a thread sampling resident memory (RSS) and glibc's
`mallinfo2` (bytes malloc has handed out and not had back: what torch's CPU tensors hold) every 10 ms.
A few of tunelab's functions are wrapped from outside to name the phase the process is in (load,
wrap, forward, backward, clip, optimizer step, checkpoint, final/); nothing in tunelab changes.
At exit each rank prints one table to stderr: per phase, RSS on entry and the highest RSS and
malloc'd bytes seen during it. Not a test; the figures are not timing-sensitive.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks")
        + ("fordblks", "keepcost")
    ]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _Mallinfo2


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def malloced() -> tuple[int, int]:
    """(bytes malloc has handed out and not had back, freed bytes it keeps in its arenas), all arenas."""
    info = _LIBC.mallinfo2()
    return info.uordblks + info.hblkhd, info.fordblks  # arenas + blocks mmapped on their own; free


class Timeline:
    def __init__(self):
        self.phase = "start"
        # phase -> [rss on entry, max rss, max malloc'd, malloc's free bytes at the max rss, entries]
        self.rows: dict[str, list[float]] = {}
        self.order: list[str] = []
        self.lock = threading.Lock()
        self.enter("imports")
        threading.Thread(target=self._sample, daemon=True).start()

    def enter(self, phase: str) -> str:
        with self.lock:
            before, self.phase = self.phase, phase
            now = rss()
            if phase not in self.rows:
                self.rows[phase] = [now, now, *malloced(), 0]
                self.order.append(phase)
            self.rows[phase][4] += 1
        return before

    def _sample(self):
        while True:
            r, (used, free) = rss(), malloced()
            with self.lock:
                row = self.rows[self.phase]
                if r > row[1]:
                    row[1], row[3] = r, free
                row[2] = max(row[2], used)
            time.sleep(0.01)

    def wrap(self, owner, name: str, phase: str, first: str | None = None):
        """Name the phase while owner.name runs; `first`: another name for its first call."""
        inner = getattr(owner, name)
        calls = [0]

        def wrapped(*args, **kwargs):
            calls[0] += 1
            before = self.enter(first if first and calls[0] == 1 else phase)
            try:
                return inner(*args, **kwargs)
            finally:
                self.enter(before)

        setattr(owner, name, wrapped)

    def report(self):
        rank = os.environ.get("RANK", "0")
        lines = [
            f"memory timeline, rank {rank} (MB): phase | RSS on entry | peak RSS | peak malloc'd "
            "| malloc's free bytes at the peak RSS | calls"
        ]
        for phase in self.order:
            entry, peak, used, free, n = self.rows[phase]
            mb = [f"{v / 2**20:8,.0f}" for v in (entry, peak, used, free)]
            lines.append(f"  {phase:<34} {' '.join(mb)}  x{n}")
        print("\n".join(lines), file=sys.stderr, flush=True)


def main() -> int:
    timeline = Timeline()
    import atexit

    import tunelab.cli as cli
    import tunelab.stages.common as common
    import tunelab.stages.sft as sft
    import tunelab.train.checkpoint as checkpoint
    import tunelab.train.guard as guard
    import tunelab.train.lifecycle as lifecycle
    import tunelab.train.loop as loop
    from tunelab.train.dist import Dist

    atexit.register(timeline.report)
    timeline.enter("after imports (cli, loop)")
    timeline.wrap(common, "prepare_model", "load model")
    timeline.wrap(sft, "prepare_model", "load model")  # sft imported it by name
    timeline.wrap(Dist, "wrap", "wrap (shard) + optimizer")
    timeline.wrap(loop, "_step", "step: rest (zero_grad, trim)", first="step 1: rest")
    timeline.wrap(sft, "loss_fn", "step: forward (loss_fn)", first="step 1: forward (loss_fn)")
    timeline.wrap(Dist, "backward", "step: backward")
    timeline.wrap(Dist, "clip_grad_norm", "step: clip grad norm")
    timeline.wrap(guard, "guarded_step", "step: optimizer.step", first="step: first optimizer.step")
    timeline.wrap(checkpoint, "save", "checkpoint save")
    timeline.wrap(lifecycle.Checkpoints, "resume", "resume (load checkpoint)")
    timeline.wrap(lifecycle, "save_final_everywhere", "final/ save")
    timeline.wrap(loop, "train", "train loop, between steps")
    timeline.wrap(loop, "conclude", "conclude (final/, report)")
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
