"""Where a run's numbers go: metrics.jsonl (one object per logged step), TensorBoard, and PNG plots.

A write that fails (a full disk, a folder made read-only) stops the run with one paragraph saying what
could not be written and how to go on from the newest checkpoint (checkpoint.writing); plots are made
again from metrics.jsonl at the end, so a plot that cannot be written is only a warning.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def _writing(what: str, run_dir: Path):
    from tunelab.train.checkpoint import writing

    return writing(what, run_dir)


def _row(line: str) -> dict | None:
    """A logged row, or None for a blank line or the half line a run killed mid-write leaves behind."""
    try:
        return json.loads(line) if line.strip() else None
    except json.JSONDecodeError:
        return None


class MetricsLog:
    def __init__(self, run_dir: Path, resume_step: int = 0):
        self.path = run_dir / "metrics.jsonl"
        self.run_dir = run_dir
        if self.path.exists():  # a resumed run: forget what was logged after the checkpoint
            with _writing(f"the metrics log {self.path}", run_dir):
                kept = [
                    line
                    for line in self.path.read_text(errors="replace").splitlines()
                    if isinstance(row := _row(line), dict)
                    and isinstance(row.get("step"), int)
                    and row["step"] <= resume_step
                ]
                self.path.write_text("".join(line + "\n" for line in kept))
        self._tb = None
        self._tb_dir = run_dir
        self._resume_step = resume_step

    def _writer(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                str(self._tb_dir), purge_step=self._resume_step + 1 if self._resume_step else None
            )
        return self._tb

    def write(self, row: dict) -> None:
        # NaN is not JSON: a non-finite value (a skipped update's loss) is written as null
        row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with _writing(f"the metrics log {self.path}", self.run_dir):
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        with _writing(f"the TensorBoard events in {self.run_dir}", self.run_dir):
            writer = self._writer()
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    writer.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self._tb is not None:
            with _writing(f"the TensorBoard events in {self.run_dir}", self.run_dir):
                self._tb.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


PLOTS = {
    "loss": ["loss", "eval_loss"],
    "lr": ["lr"],
    "grad_norm": ["grad_norm"],
    "tokens_per_s": ["tokens_per_s"],
}


def make_plots(run_dir: Path, extra: dict[str, list[str]] | None = None) -> list[Path]:
    """One PNG per group of metrics, regenerated from metrics.jsonl at the end of a run; a plot that
    cannot be written is a warning (the numbers are safe in metrics.jsonl)."""
    try:
        return _make_plots(run_dir, extra)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"warning: could not write the plots in {run_dir / 'plots'}: {exc}", file=sys.stderr)
        return []


def _make_plots(run_dir: Path, extra: dict[str, list[str]] | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    groups = dict(PLOTS)
    groups.update(extra or {})
    seen = {k for keys in groups.values() for k in keys}
    for key in sorted(
        {k for r in rows for k in r} - seen - {"step", "epoch", "tokens", "skipped", "elapsed_s"}
    ):
        if key.startswith("eval_") or isinstance(rows[-1].get(key), (int, float)):
            groups[key] = [key]
    for name, keys in groups.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        drawn = False
        for key in keys:
            points = [
                (r["step"], r[key])
                for r in rows
                if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
            ]
            if points:
                ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, markersize=3, label=key)
                drawn = True
        if drawn:
            ax.set_xlabel("step")
            ax.set_title(name)
            ax.grid(alpha=0.3)
            ax.legend()
            fig.tight_layout()
            fig.savefig(out_dir / f"{name}.png", dpi=80)
            written.append(out_dir / f"{name}.png")
        plt.close(fig)
    return written
