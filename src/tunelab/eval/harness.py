"""Run one strategy of one model on a task's rows: scores with intervals, cost, and every output.

    result = evaluate(lm, task, "cot", PromptingOptions(), task.eval[:50])
    result.metrics["json"]          # (mean, low, high): the bootstrap 95% interval
    result.rows[0]                  # {"prompt", "reference", "output", "answer", "scores", "calls", ...}

The rows go to the strategy in chunks (a chunk is one or a few batched model calls), so a progress
bar with an ETA moves as answers come in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tunelab.eval.stats import bootstrap_ci
from tunelab.prompting.lm import LM
from tunelab.prompting.strategies import STRATEGIES, Outcome, PromptingOptions
from tunelab.tasks.task import Task


@dataclass
class StrategyResult:
    strategy: str
    n: int
    metrics: dict[str, tuple[float, float, float]]  # name -> (mean, low, high)
    tokens_per_example: float  # prompt + completion tokens over every call
    calls_per_example: float
    seconds_per_example: float
    shots: float | None = None  # mean few-shot examples that fit (few_shot only)
    cpu_seconds_per_example: float | None = None  # this process's CPU time: stable on a shared machine
    rows: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "strategy": self.strategy,
            "n": self.n,
            "metrics": {k: {"mean": m, "low": lo, "high": hi} for k, (m, lo, hi) in self.metrics.items()},
            "tokens_per_example": self.tokens_per_example,
            "calls_per_example": self.calls_per_example,
            "seconds_per_example": self.seconds_per_example,
            "shots": self.shots,
        }


def _record(task: Task, row: dict, outcome: Outcome, scores: dict[str, float]) -> dict:
    return {
        "prompt": task.prompt(row),
        "reference": task.reference(row),
        "output": outcome.output,
        "answer": outcome.answer,
        "scores": scores,
        "calls": outcome.calls,
        "tokens": outcome.tokens,
        "shots": outcome.shots,
        "trace": outcome.trace,
    }


def evaluate(
    lm: LM,
    task: Task,
    strategy: str,
    opts: PromptingOptions,
    rows: list[dict],
    *,
    chunk: int = 16,
    seed: int = 0,
    resamples: int = 1000,
    progress=None,
) -> StrategyResult:
    """Score `strategy` on `rows`; `progress` is an optional rich Progress to report to."""
    run = STRATEGIES[strategy]
    records, outcomes = [], []
    task_id = progress.add_task(strategy, total=len(rows)) if progress else None
    start, cpu_start = time.perf_counter(), time.process_time()
    for first in range(0, len(rows), chunk):
        part = rows[first : first + chunk]
        for row, outcome in zip(part, run(lm, task, part, opts, seed + first), strict=True):
            records.append(_record(task, row, outcome, task.score(outcome.answer, row)))
            outcomes.append(outcome)
        if progress:
            progress.advance(task_id, len(part))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    n = len(records)
    metrics = {
        name: bootstrap_ci([r["scores"][name] for r in records], resamples=resamples, seed=seed)
        for name in task.metrics
    }
    shots = [o.shots for o in outcomes if o.shots is not None]
    return StrategyResult(
        strategy=strategy,
        n=n,
        metrics=metrics,
        tokens_per_example=sum(o.tokens for o in outcomes) / max(n, 1),
        calls_per_example=sum(o.calls for o in outcomes) / max(n, 1),
        seconds_per_example=seconds / max(n, 1),
        shots=sum(shots) / len(shots) if shots else None,
        rows=records,
        cpu_seconds_per_example=cpu_seconds / max(n, 1),
    )
