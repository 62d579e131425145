"""The ladder's report: a table, three plots, a recommendation; as report.md and a self-contained report.html.

paths = write_report(ladder)     # {"md": ..., "html": ..., "json": ..., "plots": [...]}
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from tunelab.ladder.run import Ladder, RungResult

COLUMNS = [
    "rung",
    "metric [95% CI]",
    "train s",
    "trained params",
    "stored",
    "peak MB (plan)",
    "tokens/answer",
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


def cells(ladder: Ladder, r: RungResult) -> list[str]:
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
    return [
        r.name,
        f"{mean:.2f} [{low:.2f}, {high:.2f}]",
        f"{r.train_seconds:.0f}",
        f"{r.trainable_params:,}",
        _size(r.stored_bytes),
        peak,
        "" if r.tokens_per_example is None else f"{r.tokens_per_example:.0f}",
        _signed(d_ppl, 2),
        _signed(d_ret, 2),
        _signed(gap, 2),
    ]


def recommend(ladder: Ladder) -> tuple[RungResult | None, str]:
    """The cheapest rung whose metric is within `tolerance` of the best: cost = training time, then tokens."""
    done = [r for r in ladder.results.values() if r.status == "ok" and r.metric]
    if not done:
        return None, "No rung finished, so there is nothing to recommend."
    best = max(done, key=lambda r: r.metric[0])
    tol = ladder.cfg.tolerance
    good = [r for r in done if r.metric[0] >= best.metric[0] - tol]
    pick = min(good, key=lambda r: (r.train_seconds, r.tokens_per_example or 0))
    metric = ladder.task.metric
    why = (
        f"**{pick.name}**: {metric} {pick.metric[0]:.2f} [{pick.metric[1]:.2f}, {pick.metric[2]:.2f}], "
        f"within {tol:.2f} of the best ({best.name}, {best.metric[0]:.2f}), for {pick.train_seconds:.0f} s of "
        f"training, {_size(pick.stored_bytes)} to store and {pick.tokens_per_example or 0:.0f} tokens per answer."
    )
    others = [r.name for r in good if r is not pick]
    if others:
        why += f" Also within tolerance but costlier: {', '.join(others)}."
    if best.metric[0] < 0.5:
        why += " Even the best rung is below 0.5: more data, more steps or a larger model may be needed."
    return pick, why


def plots(ladder: Ladder) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = ladder.out / "plots"
    folder.mkdir(exist_ok=True)
    done = [r for r in ladder.results.values() if r.status == "ok" and r.metric]
    metric = ladder.task.metric
    paths = []

    fig, ax = plt.subplots(figsize=(8, 4))
    names = [r.name for r in done]
    means = [r.metric[0] for r in done]
    errors = [[r.metric[0] - r.metric[1] for r in done], [r.metric[2] - r.metric[0] for r in done]]
    colors = ["#8fb3d9" if r.kind == "prompting" else "#e39b5b" for r in done]
    ax.bar(names, means, yerr=errors, capsize=4, color=colors)
    ax.set_ylabel(f"{metric} (held out, 95% CI)")
    ax.set_title(f"{ladder.task.name}: every rung (blue: prompting, orange: training)")
    ax.set_ylim(0, 1.05)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    paths.append(folder / "metric_per_rung.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in done:
        x = r.train_seconds + 1  # +1 s so that prompting rungs sit on a log axis
        ax.errorbar(
            x,
            r.metric[0],
            yerr=[[r.metric[0] - r.metric[1]], [r.metric[2] - r.metric[0]]],
            fmt="o",
            capsize=3,
        )
        ax.annotate(r.name, (x, r.metric[0]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training cost: seconds (+1) on this machine")
    ax.set_ylabel(metric)
    ax.set_title("quality against training cost")
    fig.tight_layout()
    paths.append(folder / "metric_vs_cost.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for r in done:
        if not r.run_dir:
            continue
        rows = [
            json.loads(line)
            for line in (Path(r.run_dir) / "metrics.jsonl").read_text().splitlines()
            if line.strip()
        ]
        points = [(row["step"], row["loss"]) for row in rows if isinstance(row.get("loss"), float)]
        if points:
            ax.plot(*zip(*points), label=r.name)
            drawn = True
    if drawn:
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("training curves")
    fig.tight_layout()
    paths.append(folder / "training_curves.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _notes(ladder: Ladder) -> list[str]:
    base = ladder.base
    lines = [
        f"Held-out rows: {len(ladder.rows)}; training rows: {len(ladder.task.train)}; model: `{ladder.cfg.model.name}`.",
        "Intervals: percentile bootstrap 95%. Train s: every second spent making the rung (sampling, "
        "training; rl and best_of_n with policy=sft include the SFT rung they start from). Stored: weight files beyond the "
        "base model. Peak MB: the training process's peak resident memory (plan's estimate in brackets); "
        "for prompting rungs, this process's memory.",
        f"Forgetting: Δ = after − before, on general text perplexity (base {base.perplexity:.2f}; higher = "
        f"forgot more) and on the second task `{ladder.cfg.retention.task}` (base "
        f"{base.retention if base.retention is not None else float('nan'):.2f}; lower = forgot more). "
        "Gap (over-fitting): score on training rows − held-out score.",
    ]
    for r in ladder.results.values():
        if r.notes:
            lines.append(f"{r.name}: " + "; ".join(r.notes) + ".")
    return lines


def write_report(ladder: Ladder) -> dict:
    pick, why = recommend(ladder)
    images = plots(ladder)
    rows = [cells(ladder, r) for r in ladder.results.values()]
    md = [f"# Ladder: {ladder.cfg.model.name} on {ladder.task.name}", "", f"Recommendation: {why}", ""]
    md += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    md += [""] + [f"- {line}" for line in _notes(ladder)] + [""]
    md += [f"![{p.stem}](plots/{p.name})" for p in images]
    (ladder.out / "report.md").write_text("\n".join(md) + "\n")

    def img(path: Path) -> str:
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<figure><img alt="{path.stem}" src="data:image/png;base64,{data}"><figcaption>{path.stem}</figcaption></figure>'

    table = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS) + "</tr>"
    for row, r in zip(rows, ladder.results.values(), strict=True):
        cls = ' class="pick"' if pick is r else ""
        table += f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
    recommendation = html.escape(why).replace("**", "")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tunelab ladder: {html.escape(ladder.task.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1200px; }}
table {{ border-collapse: collapse; font-size: 0.9rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
tr.pick {{ background: #e8f5e1; font-weight: 600; }}
.rec {{ background: #f4f8fb; border-left: 4px solid #4a90c2; padding: 0.6rem 1rem; }}
figure {{ display: inline-block; margin: 1rem 1rem 0 0; }} img {{ max-width: 560px; }}
</style></head><body>
<h1>Ladder: {html.escape(ladder.cfg.model.name)} on {html.escape(ladder.task.name)}</h1>
<p class="rec">Recommendation: {recommendation}</p>
<table>{table}</table>
<ul>{"".join(f"<li>{html.escape(line)}</li>" for line in _notes(ladder))}</ul>
{"".join(img(p) for p in images)}
</body></html>
"""
    (ladder.out / "report.html").write_text(page)
    return {"md": ladder.out / "report.md", "html": ladder.out / "report.html", "plots": images}


def print_table(ladder: Ladder, console) -> None:
    """The table in the terminal (wide enough not to wrap when the output is a file or a pipe)."""
    from rich.table import Table

    from tunelab.console import table_console

    if not console.is_terminal:
        console = table_console()

    table = Table(
        title=f"ladder: {ladder.cfg.model.name} on {ladder.task.name} ({ladder.task.metric}, held out)"
    )
    for c in COLUMNS:
        table.add_column(c, justify="left" if c == "rung" else "right")
    for r in ladder.results.values():
        table.add_row(*cells(ladder, r))
    console.print(table)
    console.print("recommendation: " + recommend(ladder)[1].replace("**", ""))
