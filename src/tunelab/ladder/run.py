"""`tunelab ladder TASK.yaml`: every way of using one base model on one task, quality against cost.

    tunelab ladder examples/tasks/extract.yaml                    # the default rungs
    tunelab ladder my_task.yaml rungs=[zero_shot,few_shot,lora] lora.steps=50 seeds=3
    tunelab ladder my_task.yaml curves.rungs=[lora,full]          # + learning curves over data size
    tunelab quickstart                                            # the ladder on SmolLM2 + the built-in task

Prompting rungs run in this process on the base model. Training rungs run `tunelab sft|rm|rl` as
child processes (their own run folders, logs and peak memory; a crash fails the rung, not the ladder),
train until their validation metric stops improving, and are then scored here like the prompting
rungs. Every rung is also measured for forgetting (perplexity on general text and a second task,
before vs after) and, when it trained, for over-fitting (score on training rows minus held-out score).
The decision is tunelab.ladder.decide's stated rule. Modules: state (what rungs share) <- rungs (each
rung), curves, plots <- report (table, decision, files) <- run (this: the order of things).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

from tunelab.config import dump_config
from tunelab.config.schema import LadderConfig
from tunelab.errors import TunelabError
from tunelab.ladder.curves import learning_curves
from tunelab.ladder.report import print_table, write_report
from tunelab.ladder.rungs import RUNGS, baseline, plan_line, split_validation, train_rung
from tunelab.ladder.state import Ladder, RungResult
from tunelab.stages.common import in_precision


def _progress(console):
    from tunelab.console import progress_bar

    return progress_bar(console)


def run_rung(ladder: Ladder, i: int, name: str) -> RungResult:
    """One rung; a failure is recorded, and the ladder goes on."""
    console, n = ladder.console, len(ladder.cfg.rungs)
    line = plan_line(ladder, name)
    console.print(f"[bold]rung {i}/{n}: {name}[/]" + (f" — plan: {line}" if line else ""))
    start = time.perf_counter()
    try:
        result = RUNGS[name](ladder)
    except Exception as exc:  # a failed rung is reported, and the ladder goes on
        message = str(exc) if isinstance(exc, TunelabError) else f"{type(exc).__name__}: {exc}"
        result = RungResult(name, "failed", status="failed", error=message)
        console.print(f"  [red]failed[/]: {message}")
    if result.status == "ok" and result.metric:
        mean, low, high = result.metric
        console.print(
            f"  {ladder.task.metric} {mean:.3f} [{low:.3f}, {high:.3f}] in {time.perf_counter() - start:.0f} s"
            + (f"; {result.steps_run} steps, stopped: {result.stopped}" if result.steps_run else "")
        )
    return result


def _progress_file(ladder: Ladder) -> None:
    rungs = [r.as_dict() for r in ladder.results.values()]
    doc = {"base": ladder.base.as_dict(), "rungs": rungs}
    (ladder.out / "results.json").write_text(json.dumps(doc, indent=1))


@in_precision
def main(cfg: LadderConfig) -> Path:
    from rich.console import Console

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
            ladder.results[name] = run_rung(ladder, i, name)
            _progress_file(ladder)
            progress.advance(overall)
        if cfg.curves.rungs:
            try:
                fit_rows = split_validation(ladder)[0]
                ladder.curves = learning_curves(ladder, train_rung, ladder.results, fit_rows)
            except Exception as exc:  # the curves are extra: the table and decision still stand
                console.print(f"  [red]learning curves failed[/]: {type(exc).__name__}: {exc}")
    paths = write_report(ladder)
    freed = tidy(ladder.out, cfg.keep_models)
    print_table(ladder, Console())
    console.print(
        f"report: {paths['html'].resolve()}  ({freed / 2**20:,.0f} MB of checkpoints and unused models removed)"
    )
    return ladder.out


def tidy(out: Path, keep_models: str) -> int:
    """Remove what the report does not need from the rungs' run folders: every checkpoint (the
    optimizer state of a full fine-tuning rung alone is 1 GB), and the trained models that
    `keep_models` lets go (recommended: all but the recommended rung's; none: every one). Each rung's
    `runs/<rung>.cmd` retrains it. Returns the bytes freed."""
    import shutil

    try:
        pick = json.loads((out / "results.json").read_text())["recommendation"]["rung"]
    except (OSError, ValueError, KeyError, TypeError):
        pick = None
    freed = 0
    for run in sorted((out / "runs").glob("*/")):
        keep = keep_models == "all" or (keep_models == "recommended" and run.name == pick)
        doomed = ["checkpoints", "best"] + ([] if keep else ["final", "merged"])
        for name in doomed:
            folder = run / name
            if folder.is_dir():
                freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                shutil.rmtree(folder, ignore_errors=True)
    return freed
