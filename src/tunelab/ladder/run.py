"""`tunelab ladder TASK.yaml`: every way of using one base model on one task, quality against cost.

    tunelab ladder examples/tasks/extract.yaml                    # the default rungs
    tunelab ladder my_task.yaml rungs=[zero_shot,few_shot,lora] lora.steps=50
    tunelab quickstart                                            # the ladder on SmolLM2 + the built-in task

Prompting rungs run in this process on the base model. Training rungs run `tunelab sft|rm|rl` as
child processes (their own run folders, logs and peak memory; a crash fails the rung, not the ladder),
and are then scored here like the prompting rungs. Every rung is also measured for forgetting
(perplexity on general text and a second task, before vs after) and, when it trained, for over-fitting
(score on training rows minus held-out score). See tunelab.ladder.rungs for each rung.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunelab.config import dump_config
from tunelab.config.schema import LadderConfig
from tunelab.errors import TunelabError


@dataclass
class RungResult:
    name: str
    kind: str  # prompting | training | reward | rl
    status: str = "ok"  # ok | failed | skipped
    error: str | None = None
    metric: tuple[float, float, float] | None = None  # held-out (mean, low, high)
    train_metric: float | None = None  # the same metric on training rows (over-fitting gap)
    train_seconds: float = 0.0  # every second spent making this rung (sampling, training)
    trainable_params: int = 0
    stored_bytes: int = 0  # what must be kept besides the base model
    peak_memory_mb: float | None = None
    plan_memory_mb: float | None = None
    tokens_per_example: float | None = None  # inference tokens (prompt + generated) per answer
    seconds_per_example: float | None = None
    perplexity: float | None = None  # on general text, after this rung
    retention: float | None = None  # second task's score, after this rung
    model_ref: str | None = None  # what to load to use this rung
    run_dir: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


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

    def assess(self, result: RungResult, ref: str, *, strategy: str = "zero_shot", opts=None) -> RungResult:
        """Score a trained model: held-out metric, training rows (gap), forgetting."""
        held = self.evaluate(ref, strategy, self.rows, opts)
        self.record(result, held)
        if self.train_rows:
            train = self.evaluate(ref, "zero_shot", self.train_rows)
            result.train_metric = train.metrics[self.task.metric][0]
        result.perplexity, result.retention = self.retention(ref)
        result.model_ref = ref
        return result

    def record(self, result: RungResult, evaluated) -> None:
        result.metric = evaluated.metrics[self.task.metric]
        result.tokens_per_example = evaluated.tokens_per_example
        result.seconds_per_example = evaluated.seconds_per_example
        rows_file = self.out / "outputs" / f"{result.name}.jsonl"
        rows_file.parent.mkdir(exist_ok=True)
        rows_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in evaluated.rows))

    # ---------------------------------------------------------------- child runs
    @property
    def gflops(self) -> float:
        if self._gflops is None:
            from tunelab.plan import machine_gflops

            self._gflops = machine_gflops()
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
        cmd = [sys.executable, "-m", "tunelab", stage, *overrides, f"out={run_dir}", "resume=never"]
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
        result.peak_memory_mb = usage.ru_maxrss / 1024  # kilobytes on Linux
        result.trainable_params = summary["trainable_params"]
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


def _progress(console):
    from tunelab.console import progress_bar

    return progress_bar(console)


def main(cfg: LadderConfig) -> Path:
    from rich.console import Console

    from tunelab.ladder.report import print_table, write_report
    from tunelab.ladder.rungs import RUNGS, baseline, plan_line

    console = Console(stderr=True)
    warnings.filterwarnings("ignore", message="Position ids are not supported")  # peft prompt tuning
    warnings.filterwarnings("ignore", category=FutureWarning)  # the libraries' deprecation notes
    with _progress(console) as progress:
        ladder = Ladder(cfg, console, progress)
        (ladder.out / "config.yaml").write_text(dump_config(cfg))
        console.print(
            f"ladder: {cfg.model.name} on {ladder.task.name}: {len(ladder.rows)} held-out rows, "
            f"{len(ladder.task.train)} training rows; rungs: {', '.join(cfg.rungs)}"
        )
        console.print(f"report folder: {ladder.out}")
        overall = progress.add_task("ladder", total=len(cfg.rungs) + 1)
        console.print("[bold]base model[/]: forgetting baseline (perplexity on general text, second task)")
        ladder.base = baseline(ladder)
        progress.advance(overall)
        for i, name in enumerate(cfg.rungs, 1):
            line = plan_line(ladder, name)
            console.print(
                f"[bold]rung {i}/{len(cfg.rungs)}: {name}[/]" + (f" — plan: {line}" if line else "")
            )
            start = time.perf_counter()
            try:
                result = RUNGS[name](ladder)
            except Exception as exc:  # a failed rung is reported, and the ladder goes on
                message = str(exc) if isinstance(exc, TunelabError) else f"{type(exc).__name__}: {exc}"
                result = RungResult(name, "failed", status="failed", error=message)
                console.print(f"  [red]failed[/]: {message}")
            ladder.results[name] = result
            if result.status == "ok" and result.metric:
                console.print(
                    f"  {ladder.task.metric} {result.metric[0]:.3f} [{result.metric[1]:.3f}, {result.metric[2]:.3f}]"
                    f" in {time.perf_counter() - start:.0f} s"
                )
            (ladder.out / "results.json").write_text(
                json.dumps(
                    {"base": ladder.base.as_dict(), "rungs": [r.as_dict() for r in ladder.results.values()]},
                    indent=1,
                )
            )
            progress.advance(overall)
    paths = write_report(ladder)
    print_table(ladder, Console())
    console.print(f"report: {paths['html'].resolve()}")
    return ladder.out
