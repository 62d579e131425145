"""The ladder's report: a table, plots, the decision and its why; report.md, report.html, results.json.

paths = write_report(ladder)     # {"md": ..., "html": ..., "plots": [...]}

Every rung is compared with the best one on the same held-out rows (paired bootstrap, `vs best`); the
decision is tunelab.ladder.decide's rule on the rungs' per-row scores and costs.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.ladder.curves import last_slope, overtakes, slope_words
from tunelab.ladder.decide import Candidate, Decision, Rule, decide
from tunelab.ladder.plots import plots
from tunelab.ladder.state import Ladder, RungResult, validation_split
from tunelab.ladder.stats import paired_bootstrap, resolved, rows_to_resolve, spread

COLUMNS = [
    "rung",
    "metric [95% CI]",
    "vs best [95% CI]",
    "seeds min–max",
    "steps (stopped)",
    "train CPU s (wall)",
    "peak MB (plan)",
    "stored",
    "tokens/answer",
    "CPU s/answer (wall)",
    "trained params",
    "Δ ppl",
    "Δ 2nd task",
    "gap",
]


def _size(n_bytes: int) -> str:
    if not n_bytes:
        return "0"
    return f"{n_bytes / 2**20:.1f} MB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.0f} KB"


def _signed(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:+.{digits}f}"


def done(ladder: Ladder) -> list[RungResult]:
    return [r for r in ladder.results.values() if r.status == "ok" and r.metric and r.scores]


def vs_best(ladder: Ladder) -> dict[str, tuple[float, float, float]]:
    """Each finished rung minus the best one, on the same held-out rows (paired bootstrap)."""
    rungs = done(ladder)
    if not rungs:
        return {}
    best = max(rungs, key=lambda r: r.metric[0])
    return {r.name: paired_bootstrap(r.scores, best.scores, seed=ladder.cfg.seed) for r in rungs}


def cells(ladder: Ladder, r: RungResult, vs: dict) -> list[str]:
    """One table row; forgetting is after − before (perplexity up, or second-task score down, is forgetting)."""
    if r.status != "ok":
        return [r.name, f"failed: {r.error}"] + [""] * (len(COLUMNS) - 2)
    base = ladder.base
    mean, low, high = r.metric
    peak = "" if r.peak_memory_mb is None else f"{r.peak_memory_mb:,.0f}"
    if r.plan_memory_mb:
        peak += f" ({r.plan_memory_mb:,.0f})"
    d_ppl = None if r.perplexity is None or base.perplexity is None else r.perplexity - base.perplexity
    d_ret = None if r.retention is None or base.retention is None else r.retention - base.retention
    gap = None if r.train_metric is None else r.train_metric - mean
    diff = vs.get(r.name)
    is_best = diff is not None and r.name == max(done(ladder), key=lambda d: d.metric[0]).name
    seeds = spread(r.seed_metrics)
    steps = (
        ""
        if r.steps_run is None
        else f"{r.steps_run} ({r.stopped}" + (f", best {r.best_step})" if r.best_step else ")")
    )
    return [
        r.name,
        f"{mean:.2f} [{low:.2f}, {high:.2f}]",
        "" if diff is None else "best" if is_best else f"{diff[0]:+.2f} [{diff[1]:+.2f}, {diff[2]:+.2f}]",
        "" if seeds is None else f"{seeds[0]:.2f}–{seeds[1]:.2f} ({len(r.seed_metrics)})",
        steps,
        f"{r.train_cpu_s:.0f} ({r.train_seconds:.0f})",
        peak,
        _size(r.stored_bytes),
        "" if r.tokens_per_example is None else f"{r.tokens_per_example:.0f}",
        ""
        if r.seconds_per_example is None
        else f"{r.cpu_per_example or r.seconds_per_example:.3f} ({r.seconds_per_example:.3f})",
        f"{r.trainable_params:,}",
        _signed(d_ppl, 2),
        _signed(d_ret, 2),
        _signed(gap, 2),
    ]


def rule(ladder: Ladder) -> Rule:
    cfg = ladder.cfg
    return Rule(
        tolerance=cfg.tolerance,
        target=cfg.target,
        memory_mb=cfg.limits.memory_mb,
        storage_mb=cfg.limits.storage_mb,
        answers=cfg.usage.answers,
        cost_margin=cfg.cost_margin,
    )


def candidate(r: RungResult) -> Candidate:
    return Candidate(
        r.name,
        r.scores,
        train_cpu_s=r.train_cpu_s,
        seconds_per_answer=r.cpu_per_example or r.seconds_per_example or 0.0,  # CPU when measured
        peak_memory_mb=r.peak_memory_mb or 0.0,
        stored_bytes=r.stored_bytes,
        tokens_per_answer=r.tokens_per_example or 0.0,
    )


def recommend(ladder: Ladder) -> Decision:
    """tunelab.ladder.decide's rule on every finished rung."""
    return decide([candidate(r) for r in done(ladder)], rule(ladder), ladder.task.metric)


def resolution_words(ladder: Ladder, vs: dict) -> list[str]:
    """Which differences from the best the held-out rows resolve, and the rows the closest call needs."""
    if not vs:
        return []
    best = max(done(ladder), key=lambda r: r.metric[0]).name
    apart = [n for n, (_, lo, hi) in vs.items() if n != best and resolved(lo, hi)]
    close = [n for n, (_, lo, hi) in vs.items() if n != best and not resolved(lo, hi)]
    lines = [
        f"Resolved as worse than {best} on these {len(ladder.rows)} rows: {', '.join(apart) or 'none'}. "
        f"Not resolved (the interval of the difference holds 0): {', '.join(close) or 'none'}."
    ]
    moving = [n for n in close if vs[n][0] != 0]
    if moving:
        n = max(moving, key=lambda k: vs[k][0])  # the runner-up: the closest call
        need = rows_to_resolve(*vs[n], len(ladder.rows))
        lines.append(
            f"Closest call: {n} vs {best}, {vs[n][0]:+.2f} [{vs[n][1]:+.2f}, {vs[n][2]:+.2f}]: about "
            f"{need:,} held-out rows (now {len(ladder.rows)}) would resolve a difference this size."
        )
    same = [n for n in close if vs[n][0] == 0]
    if same:
        lines.append(f"No difference at all from {best} on these rows: {', '.join(same)}.")
    return lines


def curve_words(ladder: Ladder) -> list[str]:
    if not ladder.curves:
        return []
    lines = [slope_words(name, last_slope(points)) for name, points in ladder.curves.items()]
    if "lora" in ladder.curves and "full" in ladder.curves:
        lines.append(overtakes(ladder.curves["lora"], ladder.curves["full"]))
    return lines


def results_doc(ladder: Ladder, decision: Decision, vs: dict) -> dict:
    """results.json: one object per rung, the recommendation and the curves, for scripts."""
    from tunelab.eval.stats import bootstrap_ci

    r_ = rule(ladder)
    rungs = []
    for r in ladder.results.values():
        row = r.as_dict()
        if r.metric:
            row["metric"] = dict(zip(("value", "low", "high"), r.metric, strict=True))
        d = vs.get(r.name)
        row["vs_best"] = None if d is None else dict(zip(("diff", "low", "high"), d, strict=True))
        row["costs"] = (
            None
            if not r.scores
            else {
                "train_cpu_s": r.train_cpu_s,
                "train_wall_s": r.train_seconds,
                "peak_memory_mb": r.peak_memory_mb,
                "stored_bytes": r.stored_bytes,
                "tokens_per_answer": r.tokens_per_example,
                "seconds_per_answer": r.seconds_per_example,
                "cpu_seconds_per_answer": r.cpu_per_example,
                "answers": r_.answers,
                "compute_s": candidate(r).train_cpu_s + r_.answers * candidate(r).seconds_per_answer,
            }
        )
        row["ruled_out"] = decision.ruled_out.get(r.name)
        rungs.append(row)
    curves = {
        name: [
            {
                "rows": p.rows,
                "metric": dict(zip(("value", "low", "high"), bootstrap_ci(p.scores), strict=True)),
            }
            for p in points
        ]
        for name, points in ladder.curves.items()
    }
    return {
        "base": ladder.base.as_dict() if ladder.base else None,
        "rungs": rungs,
        "recommendation": {"rung": decision.pick, "why": decision.why.replace("**", "")},
        "curves": curves,
        "rule": vars(r_),
        "held_out_rows": len(ladder.rows),
    }


def _precision_line() -> str:
    from tunelab.models import precision

    used = precision.current()  # the ladder runs inside its config's precision (stages.common.in_precision)
    return f"{used.name}, {used.why}"


def _notes(ladder: Ladder) -> list[str]:
    base, cfg = ladder.base, ladder.cfg
    try:
        n_val = len(validation_split(ladder.task.train, cfg.validation.rows, cfg.validation.share)[1])
    except TunelabError:  # too few training rows: only prompting rungs can have run
        n_val = 0
    lines = [
        f"Held-out rows: {len(ladder.rows)}; training rows: {len(ladder.task.train)}, of which the last "
        f"{n_val} are validation rows the training rungs stop on; model: `{cfg.model.name}`.",
        f"Precision: {_precision_line()} (precision={cfg.precision}; every rung trains, samples and scores in it).",
        "Intervals: percentile bootstrap 95%; vs best: the rung minus the best rung on the same rows "
        "(paired bootstrap); seeds: the held-out metric's range over seeds=N trainings.",
        "Steps: optimizer steps run (why training stopped: plateau = the validation metric stopped "
        "improving, time = `<rung>.seconds`, steps = the `<rung>.steps` cap; final/ is the best checkpoint). "
        "Train CPU s: the child processes' CPU seconds (stable on a shared machine), wall seconds in "
        "brackets; rl and best_of_n with policy=sft include the SFT rung they start from.",
        "Stored: weight files beyond the base model. Peak MB: the training process's peak resident memory "
        "(plan's estimate in brackets); for prompting rungs, this process's memory. CPU s/answer: this process's CPU seconds per "
        "held-out answer in batches of " + str(cfg.eval.batch_size) + " (wall seconds in brackets).",
        f"Forgetting: Δ = after − before, on general text perplexity (base {base.perplexity:.2f}; higher = "
        f"forgot more) and on the second task `{cfg.retention.task}` (base "
        f"{base.retention if base.retention is not None else float('nan'):.2f}; lower = forgot more). "
        "Gap (over-fitting): score on training rows − held-out score.",
    ]
    for r in ladder.results.values():
        if r.notes:
            lines.append(f"{r.name}: " + "; ".join(r.notes) + ".")
    return lines


RULE_WORDS = (
    "Decision rule: rule out rungs over limits.memory_mb / limits.storage_mb or below target; then those "
    "resolved as worse than the best by more than tolerance (paired interval wholly below −tolerance); "
    "then dominated ones (not worse on the metric, no costlier on any of compute, peak memory, storage, "
    "tokens per answer, cheaper on one). Among the rest, axis by axis in that order, keep the rungs within "
    "cost_margin× the lowest cost; compute = training CPU s + usage.answers × s/answer."
)


def _sections(ladder: Ladder, decision: Decision, vs: dict) -> list[tuple[str, list[str]]]:
    """(heading, lines) of the report's text, the same in report.md and report.html."""
    r = rule(ladder)
    settings = (
        f"tolerance={r.tolerance:g}, target={r.target}, cost_margin={r.cost_margin:g}, "
        f"usage.answers={r.answers:,}, limits.memory_mb={r.memory_mb}, limits.storage_mb={r.storage_mb}."
    )
    out = [f"{name}: {why}." for name, why in decision.ruled_out.items()]
    return [
        ("How sure", resolution_words(ladder, vs)),
        ("Decision", [RULE_WORDS + " " + settings, *(["Ruled out: " + " ".join(out)] if out else [])]),
        ("Learning curves", curve_words(ladder)),
        ("Notes", _notes(ladder)),
    ]


def write_report(ladder: Ladder) -> dict:
    decision, vs = recommend(ladder), vs_best(ladder)
    images = plots(ladder)
    rows = [cells(ladder, r, vs) for r in ladder.results.values()]
    sections = [(h, lines) for h, lines in _sections(ladder, decision, vs) if lines]
    (ladder.out / "results.json").write_text(json.dumps(results_doc(ladder, decision, vs), indent=1))
    md = [
        f"# Ladder: {ladder.cfg.model.name} on {ladder.task.name}",
        "",
        f"Recommendation: {decision.why}",
        "",
    ]
    md += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    for heading, lines in sections:
        md += ["", f"## {heading}", ""] + [f"- {line}" for line in lines]
    md += [""] + [f"![{p.stem}](plots/{p.name})" for p in images]
    (ladder.out / "report.md").write_text("\n".join(md) + "\n")
    (ladder.out / "report.html").write_text(_html(ladder, decision, rows, sections, images))
    return {"md": ladder.out / "report.md", "html": ladder.out / "report.html", "plots": images}


def _html(ladder: Ladder, decision: Decision, rows: list, sections: list, images: list[Path]) -> str:
    def img(path: Path) -> str:
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<figure><img alt="{path.stem}" src="data:image/png;base64,{data}"><figcaption>{path.stem}</figcaption></figure>'

    table = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS) + "</tr>"
    for row, r in zip(rows, ladder.results.values(), strict=True):
        cls = ' class="pick"' if decision.pick == r.name else ""
        table += f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
    text = "".join(
        f"<h2>{html.escape(h)}</h2><ul>"
        + "".join(f"<li>{html.escape(line)}</li>" for line in lines)
        + "</ul>"
        for h, lines in sections
    )
    recommendation = html.escape(decision.why).replace("**", "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tunelab ladder: {html.escape(ladder.task.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1400px; }}
table {{ border-collapse: collapse; font-size: 0.85rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.3rem 0.5rem; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
tr.pick {{ background: #e8f5e1; font-weight: 600; }}
.rec {{ background: #f4f8fb; border-left: 4px solid #4a90c2; padding: 0.6rem 1rem; }}
figure {{ display: inline-block; margin: 1rem 1rem 0 0; }} img {{ max-width: 560px; }}
</style></head><body>
<h1>Ladder: {html.escape(ladder.cfg.model.name)} on {html.escape(ladder.task.name)}</h1>
<p class="rec">Recommendation: {recommendation}</p>
<table>{table}</table>
{text}
{"".join(img(p) for p in images)}
</body></html>
"""


def print_table(ladder: Ladder, console) -> None:
    """The table in the terminal (wide enough not to wrap when the output is a file or a pipe)."""
    from tunelab.console import table as console_table
    from tunelab.console import table_console

    if not console.is_terminal:
        console = table_console()
    vs = vs_best(ladder)
    table = console_table(
        f"ladder: {ladder.cfg.model.name} on {ladder.task.name} ({ladder.task.metric}, held out)",
        COLUMNS,
        left=("rung",),
    )
    for r in ladder.results.values():
        table.add_row(*cells(ladder, r, vs))
    console.print(table)
    decision = recommend(ladder)
    for line in resolution_words(ladder, vs) + curve_words(ladder):
        console.print(line)
    console.print("recommendation: " + decision.why.replace("**", ""))
