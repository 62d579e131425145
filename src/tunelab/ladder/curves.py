"""Learning curves over data size: each listed training rung retrained on shares of the training rows.

    ladder curves.rungs=[lora,full] curves.fractions=[0.25,0.5,1.0]

Every point is scored on the same held-out rows, so two points of one curve (more data helps?) and
two curves at one size (does full fine-tuning overtake LoRA?) are compared by a paired bootstrap.
`learning_curves` runs them; `last_slope` and `overtakes` are pure and say what the points show.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from tunelab.ladder.stats import paired_bootstrap, resolved


@dataclass
class Point:
    rows: int  # training rows the rung saw
    scores: list[float]  # the metric on each held-out row

    @property
    def metric(self) -> float:
        return sum(self.scores) / len(self.scores)


def shares(rows: list[dict], fractions: list[float], seed: int) -> list[list[dict]]:
    """Nested subsets: the first round(f x n) rows of one seeded order, so a larger share holds a smaller."""
    order = list(rows)
    random.Random(seed).shuffle(order)
    return [order[: max(1, round(f * len(order)))] for f in fractions]


def last_slope(points: list[Point]) -> dict | None:
    """The last segment's change in metric per 1,000 more rows, with its paired 95% interval."""
    if len(points) < 2:
        return None
    a, b = points[-2], points[-1]
    diff, low, high = paired_bootstrap(b.scores, a.scores)
    per = 1000 / max(1, b.rows - a.rows)
    return {
        "from": a.rows,
        "to": b.rows,
        "diff": diff,
        "low": low,
        "high": high,
        "per_1k": diff * per,
        "per_1k_low": low * per,
        "per_1k_high": high * per,
    }


def slope_words(rung: str, s: dict | None) -> str:
    if s is None:
        return f"{rung}: one point, no slope."
    change = f"{s['diff']:+.2f} [{s['low']:+.2f}, {s['high']:+.2f}] from {s['from']} to {s['to']} rows"
    if s["low"] > 0:
        return f"{rung}: still rising ({change}): more data is likely to help."
    if s["high"] < 0:
        return f"{rung}: falling ({change}): more data of this kind is unlikely to help."
    return f"{rung}: flat within the noise ({change}): these rows cannot tell whether more data helps."


def overtakes(lora: list[Point], full: list[Point]) -> str:
    """Whether, and from what size, full fine-tuning scores above LoRA (paired, at each common size)."""
    at = {p.rows: p for p in lora}
    lines, first = [], None
    for p in full:
        if p.rows not in at:
            continue
        diff, low, high = paired_bootstrap(p.scores, at[p.rows].scores)
        lines.append(f"{p.rows} rows {diff:+.2f} [{low:+.2f}, {high:+.2f}]")
        if first is None and diff > 0:
            first = (p.rows, resolved(low, high))
    if not lines:
        return "full and lora share no data size: no comparison."
    where = (
        "full never scores above lora at the sizes measured"
        if first is None
        else f"full scores above lora from {first[0]} rows"
        + (" (resolved)" if first[1] else " (not resolved: within the noise)")
    )
    return f"full − lora: {'; '.join(lines)}: {where}."


def learning_curves(ladder, train: Callable, done: dict, fit_rows: list[dict]) -> dict[str, list[Point]]:
    """Retrain each of curves.rungs on each share (train(ladder, name, rows, run_name=, seed=, data_name=)
    returns a scored RungResult); the whole share reuses the rung's own result when it ran (in `done`)."""
    cfg = ladder.cfg.curves
    curves: dict[str, list[Point]] = {}
    for name in cfg.rungs:
        points = []
        for f, rows in zip(cfg.fractions, shares(fit_rows, cfg.fractions, ladder.cfg.seed), strict=True):
            own = done.get(name)
            if f == 1.0 and own is not None and own.status == "ok":
                points.append(Point(len(rows), own.scores))
                continue
            ladder.console.print(f"[bold]learning curve[/]: {name} on {len(rows)} rows")
            result = train(
                ladder,
                name,
                rows,
                run_name=f"{name}-rows{len(rows)}",
                seed=ladder.cfg.seed,
                data_name=f"train-{len(rows)}",
            )
            points.append(Point(len(rows), result.scores))
        curves[name] = points
    return curves
