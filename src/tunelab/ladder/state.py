"""The state the ladder's rungs share: the config, the task, the rows, the loaded model, the results.

    ladder = Ladder(cfg, console, progress)
    ladder.evaluate(ref, "zero_shot", ladder.rows)      # a StrategyResult on the held-out rows
    ladder.train_child(result, "sft", overrides, steps)  # `tunelab sft ...` as a child process

Imports point one way: state <- rungs, curves <- report <- run (the command). This module imports
none of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunelab.config.schema import LadderConfig
from tunelab.errors import TunelabError


@dataclass
class RungResult:
    name: str
    kind: str  # prompting | training | reward | rl
    status: str = "ok"  # ok | failed | skipped
    error: str | None = None
    metric: tuple[float, float, float] | None = None  # held-out (mean, low, high)
    scores: list[float] = field(default_factory=list)  # the metric on each held-out row, in row order
    train_metric: float | None = None  # the same metric on training rows (over-fitting gap)
    train_seconds: float = 0.0  # every wall second spent making this rung (sampling, training)
    train_cpu_s: float = 0.0  # CPU seconds of the same (the child processes'): stable on a shared machine
    steps_run: int | None = None  # optimizer steps the (first seed's) training ran
    best_step: int | None = None  # the step final/ comes from
    stopped: str | None = None  # plateau | time | steps (the cap)
    seed_metrics: list[float] = field(default_factory=list)  # held-out metric per seed (seeds=N)
    trainable_params: int = 0
    stored_bytes: int = 0  # what must be kept besides the base model
    peak_memory_mb: float | None = None
    plan_memory_mb: float | None = None
    tokens_per_example: float | None = None  # inference tokens (prompt + generated) per answer
    seconds_per_example: float | None = None  # wall seconds per answer (batched)
    cpu_per_example: float | None = None  # CPU seconds per answer: what the cost model uses
    perplexity: float | None = None  # on general text, after this rung
    retention: float | None = None  # second task's score, after this rung
    model_ref: str | None = None  # what to load to use this rung
    run_dir: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop("scores")  # per-row scores are in outputs/<rung>.jsonl
        return out


def validation_split(rows: list[dict], most: int, share: float) -> tuple[list[dict], list[dict]]:
    """(rows to train on, validation rows): the last min(most, share x len) rows are for early stopping."""
    n = min(most, int(len(rows) * share))
    if n < 1:
        raise TunelabError(f"{len(rows)} training rows are too few to carve validation rows from.")
    return rows[:-n], rows[-n:]


def rss_mb() -> float:
    """This process's resident memory now (Linux), in MB."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def weights_size(folder: Path) -> int:
    """Bytes of the weight files in a model or adapter folder (tokenizer files are not counted)."""
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) + sum(
        p.stat().st_size for p in folder.glob("*.bin")
    )


class Ladder:
    """The state the rungs share: config, task, the loaded model, results so far, the console."""

    def __init__(self, cfg: LadderConfig, console, progress):
        from tunelab.tasks.task import load_task

        self.cfg, self.console, self.progress = cfg, console, progress
        self.task = load_task(cfg.task, seed=cfg.seed, size=cfg.eval.limit)
        if not self.task.train:
            raise TunelabError(f"The ladder needs training rows: task {self.task.name} has no data.train.")
        self.rows = self.task.eval[: cfg.eval.limit]
        self.train_rows = self.task.train[: cfg.eval.train_limit]
        self.out = Path(cfg.out or Path("runs") / f"ladder-{time.strftime('%Y%m%d-%H%M%S')}")
        self.out.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, RungResult] = {}
        self.base: RungResult | None = None
        self.curves: dict = {}  # rung -> [curves.Point], when curves.rungs is set
        self._loaded: tuple[str, object] | None = None
        self._gflops: float | None = None

    # ---------------------------------------------------------------- models
    def lm(self, ref: str):
        """A ChatModel for `ref`, kept loaded until another one is asked for (one model in memory)."""
        from tunelab.models.load import load_model
        from tunelab.prompting.lm import ChatModel
        from tunelab.rm import render_options_for

        if self._loaded and self._loaded[0] == ref:
            return self._loaded[1]
        self._loaded = None
        model, tok = load_model(ref, seed=self.cfg.seed)
        lm = ChatModel(model, tok, opts=render_options_for(ref), batch_size=self.cfg.eval.batch_size)
        self._loaded = (ref, lm)
        return lm

    def evaluate(self, ref: str, strategy: str, rows: list[dict], opts=None):
        from tunelab.eval.harness import evaluate

        return evaluate(
            self.lm(ref),
            self.task,
            strategy,
            opts or self.cfg.prompting,
            rows,
            chunk=self.cfg.eval.batch_size,
            seed=self.cfg.seed,
            progress=self.progress,
        )

    def retention(self, ref: str) -> tuple[float | None, float | None]:
        """(perplexity on general text, second task's score) of the model `ref`."""
        from tunelab.eval.harness import evaluate
        from tunelab.eval.perplexity import perplexity
        from tunelab.tasks.retention import GENERAL_TEXT
        from tunelab.tasks.task import load_task

        lm = self.lm(ref)
        text = Path(self.cfg.retention.text).read_text() if self.cfg.retention.text else GENERAL_TEXT
        ppl = perplexity(lm.model, lm.tok, text)
        score = None
        if self.cfg.retention.task:
            second = load_task(self.cfg.retention.task, seed=self.cfg.seed)
            result = evaluate(
                lm,
                second,
                "zero_shot",
                self.cfg.prompting.model_copy(update={"max_new_tokens": None}),
                second.eval[:40],
                chunk=self.cfg.eval.batch_size,
            )
            score = result.metrics[second.metric][0]
        return ppl, score

    def assess(
        self, result: RungResult, ref: str, *, strategy: str = "zero_shot", opts=None, held_out: bool = True
    ) -> RungResult:
        """Score a trained model: held-out metric (unless done already), training rows (gap), forgetting."""
        if held_out:
            self.record(result, self.evaluate(ref, strategy, self.rows, opts))
        if self.train_rows:
            train = self.evaluate(ref, "zero_shot", self.train_rows)
            result.train_metric = train.metrics[self.task.metric][0]
        result.perplexity, result.retention = self.retention(ref)
        result.model_ref = ref
        return result

    def record(self, result: RungResult, evaluated, name: str | None = None) -> None:
        result.metric = evaluated.metrics[self.task.metric]
        result.scores = [row["scores"][self.task.metric] for row in evaluated.rows]
        result.tokens_per_example = evaluated.tokens_per_example
        result.seconds_per_example = evaluated.seconds_per_example
        result.cpu_per_example = evaluated.cpu_seconds_per_example
        rows_file = self.out / "outputs" / f"{name or result.name}.jsonl"
        rows_file.parent.mkdir(exist_ok=True)
        rows_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in evaluated.rows))

    # ---------------------------------------------------------------- child runs
    @property
    def gflops(self) -> float:
        if self._gflops is None:  # the matmul speed of the precision the rungs train in
            from tunelab.models import precision
            from tunelab.plan import machine_gflops

            dtype = "bfloat16" if precision.current().name == "bf16" else "float32"
            self._gflops = machine_gflops(dtype=dtype)
        return self._gflops

    def train_child(
        self, result: RungResult, stage: str, overrides: list[str], steps: int, name: str | None = None
    ) -> Path:
        """Run `tunelab STAGE overrides... out=<ladder>/runs/NAME` as a child process, follow its steps,
        and add its time, peak memory, trained parameters and weight files to `result`."""
        name = name or result.name
        run_dir = (self.out / "runs" / name).resolve()
        log = run_dir.with_suffix(".log")
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "tunelab", stage, *overrides, f"train.precision={self.cfg.precision}"]
        cmd += [f"out={run_dir}", "resume=never"]
        (run_dir.parent / f"{name}.cmd").write_text(" ".join(cmd[1:]) + "\n")
        bar = self.progress.add_task(f"  {name}: {stage} training", total=steps) if self.progress else None
        start = time.perf_counter()
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if bar is not None:
                    self.progress.update(bar, completed=_last_step(run_dir))
                time.sleep(1.0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if bar is not None:
            self.progress.remove_task(bar)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            tail = log.read_text().strip().splitlines()[-3:]
            raise TunelabError(
                f"`tunelab {stage}` failed (exit {proc.returncode}); see {log}: " + " | ".join(tail)
            )
        summary = json.loads((run_dir / "summary.json").read_text())
        result.train_seconds += seconds
        result.train_cpu_s += usage.ru_utime + usage.ru_stime
        result.peak_memory_mb = usage.ru_maxrss / 1024  # kilobytes on Linux
        result.trainable_params = summary["trainable_params"]
        result.steps_run, result.best_step = summary["steps_done"], summary.get("best_step")
        result.stopped = summary.get("stopped", "steps")
        result.stored_bytes += weights_size(run_dir / "final")
        result.run_dir = str(run_dir)
        return run_dir


def _last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            last = f.read().decode(errors="ignore").strip().splitlines()[-1]
        return int(json.loads(last).get("step", 0))
    except (OSError, IndexError, ValueError):
        return 0
