"""`tunelab eval`: model x strategies x task -> a table with 95% intervals, and every output on disk.

    tunelab eval configs/eval.yaml
    tunelab eval model=smollm2-135m task=extract strategy=[zero_shot,rules,cot,few_shot] eval.limit=48
    tunelab eval model=runs/sft/final task=examples/tasks/extract.yaml      # a trained adapter or model

Writes to `out`: config.yaml, results.json (per strategy: metrics with intervals, tokens, calls and
seconds per example), outputs/<strategy>.jsonl (prompt, reference, output, answer, scores, trace),
judge.json when a judge is set, and report.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tunelab.config import dump_config
from tunelab.config.schema import EvalConfig
from tunelab.errors import TunelabError
from tunelab.eval.bon_check import check_line
from tunelab.eval.harness import StrategyResult, evaluate
from tunelab.stages.common import in_precision


def _interval(metric: tuple[float, float, float]) -> str:
    mean, low, high = metric
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def results_table(task, results: list[StrategyResult], title: str):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("strategy")
    for name in task.metrics:
        table.add_column(f"{name} (95% CI)", justify="right")
    for col in ("tokens/ex", "calls/ex", "s/ex", "shots"):
        table.add_column(col, justify="right")
    for r in results:
        shots = "" if r.shots is None else f"{r.shots:.1f}"
        table.add_row(
            r.strategy,
            *(_interval(r.metrics[m]) for m in task.metrics),
            f"{r.tokens_per_example:.0f}",
            f"{r.calls_per_example:.1f}",
            f"{r.seconds_per_example:.2f}",
            shots,
        )
    return table


def _markdown(cfg: EvalConfig, task, results: list[StrategyResult], judged: dict | None) -> str:
    head = ["strategy", *(f"{m} (95% CI)" for m in task.metrics), "tokens/ex", "calls/ex", "s/ex", "shots"]
    lines = [
        f"# Evaluation: {cfg.model.name} on {task.name}",
        "",
        f"{results[0].n} {cfg.eval.split} rows; intervals are percentile bootstrap 95% "
        f"({cfg.eval.resamples} resamples). Outputs: `outputs/<strategy>.jsonl`.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in results:
        shots = "" if r.shots is None else f"{r.shots:.1f}"
        cells = [
            r.strategy,
            *(_interval(r.metrics[m]) for m in task.metrics),
            f"{r.tokens_per_example:.0f}",
            f"{r.calls_per_example:.1f}",
            f"{r.seconds_per_example:.2f}",
            shots,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if judged:
        lines += ["", f"## Judge: {cfg.judge.model} (each pair asked in both orders)", ""]
        lines += [
            "| strategy | wins | ties | losses vs baseline | agreement | first-slot rate |",
            "|---|---|---|---|---|---|",
        ]
        for name, s in judged["comparisons"].items():
            lines.append(
                f"| {name} | {s['a']} | {s['tie']} | {s['b']} vs {judged['baseline']} | "
                f"{s['agreement']:.2f} | {s['first_slot_rate']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def _judge(cfg: EvalConfig, lm, results: list[StrategyResult]) -> dict:
    from tunelab.eval.judge import RUBRIC, pairwise, summarize

    names = [r.strategy for r in results]
    baseline = cfg.judge.baseline or names[0]
    if baseline not in names:
        raise TunelabError(
            f"judge.baseline '{baseline}' is not one of the strategies run ({', '.join(names)})."
        )
    if cfg.judge.model != cfg.model.name:
        from tunelab.models.load import load_model
        from tunelab.prompting.lm import ChatModel

        model, tok = load_model(cfg.judge.model)
        lm = ChatModel(model, tok, batch_size=cfg.eval.batch_size)
    base = next(r for r in results if r.strategy == baseline)
    comparisons = {}
    for result in results:
        if result.strategy == baseline:
            continue
        items = [
            (row["prompt"], row["output"], ref["output"])
            for row, ref in zip(result.rows, base.rows, strict=True)
        ]
        comparisons[result.strategy] = summarize(pairwise(lm, items, cfg.judge.rubric or RUBRIC))
    return {"judge": cfg.judge.model, "baseline": baseline, "comparisons": comparisons}


def _check_best_of_n(
    cfg: EvalConfig, lm, task, rows, results: list[StrategyResult], out: Path
) -> dict | None:
    """best_of_n against greedy decoding (zero_shot, run here when it was not asked for) and a random
    pick of the same n samples (eval/bon_check.py); None when best_of_n did not run."""
    from tunelab.eval.bon_check import best_of_n_check

    by_name = {r.strategy: r for r in results}
    if "best_of_n" not in by_name:
        return None
    greedy = by_name.get("zero_shot") or evaluate(
        lm, task, "zero_shot", cfg.prompting, rows, chunk=cfg.eval.batch_size, seed=cfg.seed
    )
    checked = best_of_n_check(task, rows, by_name["best_of_n"], greedy, rm=cfg.prompting.rm, seed=cfg.seed)
    (out / "best_of_n_check.json").write_text(json.dumps(checked, indent=1))
    return checked


@in_precision
def main(cfg: EvalConfig) -> Path:
    from rich.console import Console

    from tunelab.console import progress_bar, table_console
    from tunelab.models.load import load_model
    from tunelab.models.scorer import render_options_for
    from tunelab.prompting.lm import ChatModel
    from tunelab.tasks.task import load_task

    console = Console(stderr=True, markup=False, highlight=False)  # model, task and paths are the user's
    task = load_task(cfg.task, seed=cfg.seed, size=cfg.eval.limit or 200)
    rows = (task.eval if cfg.eval.split == "eval" else task.train)[: cfg.eval.limit]
    if not rows:
        raise TunelabError(f"Task {task.name} has no {cfg.eval.split} rows to evaluate.")
    from tunelab.config.variants import pick
    from tunelab.prompting.strategies import STRATEGIES

    for name in cfg.strategies:  # fail before loading a model: a strategy that cannot run on this task
        pick(STRATEGIES, name, "strategy")
        if name == "rules":
            from tunelab.prompting.strategies import rule_list

            rule_list(task)
        if name == "few_shot" and not task.train:
            raise TunelabError(f"few_shot needs examples: task {task.name} has no data.train rows.")
        if name == "best_of_n" and not cfg.prompting.rm:
            raise TunelabError("best_of_n needs a reward model: set prompting.rm=PATH.")
    out = Path(cfg.out or Path("runs") / f"eval-{time.strftime('%Y%m%d-%H%M%S')}")
    (out / "outputs").mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(cfg))

    model, tok = load_model(cfg.model.name, dtype=cfg.model.dtype, seed=cfg.seed)
    lm = ChatModel(model, tok, opts=render_options_for(cfg.model.name), batch_size=cfg.eval.batch_size)
    console.print(
        f"evaluating {cfg.model.name} on {task.name}: {len(rows)} rows x {', '.join(cfg.strategies)}"
    )
    results = []
    with progress_bar(console) as progress:
        for name in cfg.strategies:
            result = evaluate(
                lm,
                task,
                name,
                cfg.prompting,
                rows,
                chunk=cfg.eval.batch_size,
                seed=cfg.seed,
                resamples=cfg.eval.resamples,
                progress=progress,
            )
            results.append(result)
            with (out / "outputs" / f"{name}.jsonl").open("w") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in result.rows)
    judged = _judge(cfg, lm, results) if cfg.judge.model else None
    checked = _check_best_of_n(cfg, lm, task, rows, results, out)

    summary = {"model": cfg.model.name, "task": task.name, "split": cfg.eval.split, "n": len(rows)}
    summary["results"] = [r.summary() for r in results]
    if judged:
        summary["judge"] = judged
        (out / "judge.json").write_text(json.dumps(judged, indent=1))
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    report = _markdown(cfg, task, results, judged)
    if checked:
        summary["best_of_n_check"] = checked
        (out / "results.json").write_text(json.dumps(summary, indent=1))
        report += f"\n## Best-of-n checked\n\n- {check_line(checked)}\n"
        console.print(check_line(checked))
    (out / "report.md").write_text(report)
    table_console().print(
        results_table(task, results, f"{cfg.model.name} on {task.name} ({len(rows)} {cfg.eval.split} rows)")
    )
    if judged:
        for name, s in judged["comparisons"].items():
            console.print(
                f"judge: {name} vs {judged['baseline']}: {s['a']} wins, {s['tie']} ties, {s['b']} losses; "
                f"orders agree {s['agreement']:.0%}, first slot picked {s['first_slot_rate']:.0%}"
            )
    console.print(f"outputs and report: {out}")
    return out
