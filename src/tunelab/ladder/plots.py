"""The ladder's plots (PNG, matplotlib): metric per rung, metric against cost, training loss, the
validation metric while training (with the kept checkpoint), and learning curves over data size.

    paths = plots(ladder)       # written to <ladder>/plots/
"""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.ladder.state import Ladder, RungResult


def _figure(path: Path, draw, size=(7, 4)) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    draw(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _metric_per_rung(ladder: Ladder, rungs: list[RungResult]):
    def draw(ax):
        import matplotlib.pyplot as plt

        means = [r.metric[0] for r in rungs]
        errors = [[r.metric[0] - r.metric[1] for r in rungs], [r.metric[2] - r.metric[0] for r in rungs]]
        colors = ["#8fb3d9" if r.kind == "prompting" else "#e39b5b" for r in rungs]
        ax.bar([r.name for r in rungs], means, yerr=errors, capsize=4, color=colors)
        ax.set_ylabel(f"{ladder.task.metric} (held out, 95% CI)")
        ax.set_title(f"{ladder.task.name}: every rung (blue: prompting, orange: training)")
        ax.set_ylim(0, 1.05)
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")

    return draw


def _metric_vs_cost(ladder: Ladder, rungs: list[RungResult]):
    answers = ladder.cfg.usage.answers

    def draw(ax):
        for r in rungs:
            x = r.train_cpu_s + answers * (r.seconds_per_example or 0.0) + 1  # +1: a log axis
            yerr = [[r.metric[0] - r.metric[1]], [r.metric[2] - r.metric[0]]]
            ax.errorbar(x, r.metric[0], yerr=yerr, fmt="o", capsize=3)
            ax.annotate(r.name, (x, r.metric[0]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(f"compute: training CPU s + {answers:,} answers x s/answer")
        ax.set_ylabel(ladder.task.metric)
        ax.set_title("quality against cost")

    return draw


def _metrics_rows(run_dir: str) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _curves_of(rungs: list[RungResult], key: str, ylabel: str, title: str):
    def draw(ax):
        drawn = False
        for r in rungs:
            rows = _metrics_rows(r.run_dir) if r.run_dir else []
            points = [(row["step"], row[key]) for row in rows if isinstance(row.get(key), float)]
            if points:
                ax.plot(*zip(*points), marker="o" if key == "eval_task" else None, label=r.name)
                if key == "eval_task" and r.best_step:
                    best = dict(points).get(r.best_step)
                    if best is not None:
                        ax.plot([r.best_step], [best], "k*", markersize=10)
                drawn = True
        if drawn:
            ax.legend()
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(title)

    return draw


def _learning_curves(ladder: Ladder):
    from tunelab.eval.stats import bootstrap_ci

    def draw(ax):
        for name, points in ladder.curves.items():
            stats = [bootstrap_ci(p.scores) for p in points]
            rows = [p.rows for p in points]
            ax.errorbar(
                rows,
                [m for m, _, _ in stats],
                yerr=[[m - lo for m, lo, _ in stats], [hi - m for m, _, hi in stats]],
                marker="o",
                capsize=3,
                label=name,
            )
        ax.set_xscale("log")
        ax.set_xlabel("training rows")
        ax.set_ylabel(f"{ladder.task.metric} (held out, 95% CI)")
        ax.set_title("learning curves over data size")
        ax.legend()

    return draw


def plots(ladder: Ladder) -> list[Path]:
    folder = ladder.out / "plots"
    folder.mkdir(exist_ok=True)
    rungs = [r for r in ladder.results.values() if r.status == "ok" and r.metric]
    trained = [r for r in rungs if r.kind == "training"]
    paths = [
        _figure(folder / "metric_per_rung.png", _metric_per_rung(ladder, rungs), (8, 4)),
        _figure(folder / "metric_vs_cost.png", _metric_vs_cost(ladder, rungs)),
        _figure(
            folder / "training_curves.png", _curves_of(rungs, "loss", "training loss", "training curves")
        ),
        _figure(
            folder / "validation_curves.png",
            _curves_of(
                trained,
                "eval_task",
                f"{ladder.task.metric} on validation rows",
                "validation metric while training (star: the kept checkpoint)",
            ),
        ),
    ]
    if ladder.curves:
        paths.append(_figure(folder / "learning_curves.png", _learning_curves(ladder)))
    return paths
