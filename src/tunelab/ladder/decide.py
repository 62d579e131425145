"""The ladder's decision: which rung to use, from per-row scores and stated costs. Pure functions.

    decision = decide(candidates, Rule(tolerance=0.05, answers=10_000))
    decision.pick, decision.why, decision.ruled_out     # "lora", "...", {"full": "dominated by lora"}

The rule, in the order it is applied:
1. Limits and the bar: a rung whose peak memory is above `limits.memory_mb`, whose stored weights are
   above `limits.storage_mb`, or whose metric is below `target` is ruled out.
2. Quality: compared with the best remaining rung on the same rows (paired bootstrap), a rung whose
   whole interval of the difference lies below -tolerance is ruled out: resolved as worse by more
   than the tolerance. Differences the data cannot resolve do not rule a rung out.
3. Dominance: a rung is ruled out when another one is not resolved as worse than it and costs no more
   on any axis (COSTS) and less on at least one.
4. Cost, axis by axis in COSTS order: keep the rungs within `cost_margin` x the lowest cost on that
   axis (a smaller difference is within what a shared machine's timing or a run's noise can move), and
   go on to the next axis; the first axis is total compute for the expected use. What is left after
   the last axis: the lowest compute, then the higher metric.
So a tie on the metric between LoRA and full fine-tuning goes to LoRA unless full fine-tuning needs
less than 1/cost_margin of LoRA's compute: memory and storage then decide.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.ladder.stats import paired_bootstrap


@dataclass(frozen=True)
class Candidate:
    name: str
    scores: list[float]  # the task metric on each held-out row (the same rows for every candidate)
    train_cpu_s: float = 0.0  # CPU seconds spent training
    seconds_per_answer: float = 0.0  # CPU seconds per answer where measured
    peak_memory_mb: float = 0.0
    stored_bytes: int = 0
    tokens_per_answer: float = 0.0

    @property
    def metric(self) -> float:
        return sum(self.scores) / len(self.scores)


@dataclass(frozen=True)
class Rule:
    tolerance: float = 0.05
    target: float | None = None
    memory_mb: float | None = None
    storage_mb: float | None = None
    answers: int = 10_000
    cost_margin: float = 1.5


@dataclass(frozen=True)
class Cost:
    label: str
    unit: str
    value: object  # (Candidate, Rule) -> float


def compute_s(c: Candidate, rule: Rule) -> float:
    """Training CPU seconds plus the expected answers' seconds."""
    return c.train_cpu_s + rule.answers * c.seconds_per_answer


COSTS = {  # the axes, in the order the rule looks at them
    "compute_s": Cost("compute", "s", compute_s),
    "peak_memory_mb": Cost("peak memory", "MB", lambda c, r: c.peak_memory_mb),
    "stored_mb": Cost("storage", "MB", lambda c, r: c.stored_bytes / 2**20),
    "tokens_per_answer": Cost("tokens per answer", "tokens", lambda c, r: c.tokens_per_answer),
}


@dataclass
class Decision:
    pick: str | None
    why: str
    best: str | None = None
    ruled_out: dict[str, str] = field(default_factory=dict)  # name -> the reason, in words
    vs_best: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # vs the best admitted


def costs_of(c: Candidate, rule: Rule) -> dict[str, float]:
    return {key: cost.value(c, rule) for key, cost in COSTS.items()}


def _limits(c: Candidate, rule: Rule, metric: str) -> str | None:
    if rule.memory_mb is not None and c.peak_memory_mb > rule.memory_mb:
        return f"peak memory {c.peak_memory_mb:,.0f} MB > limits.memory_mb={rule.memory_mb:,.0f}"
    if rule.storage_mb is not None and c.stored_bytes / 2**20 > rule.storage_mb:
        return f"stores {c.stored_bytes / 2**20:,.1f} MB > limits.storage_mb={rule.storage_mb:,.1f}"
    if rule.target is not None and c.metric < rule.target:
        return f"{metric} {c.metric:.2f} below target={rule.target:.2f}"
    return None


def dominates(a: Candidate, b: Candidate, rule: Rule) -> bool:
    """a is not resolved as worse than b, costs no more on any axis and less on one."""
    _, _, high = paired_bootstrap(a.scores, b.scores)
    if high < 0:
        return False
    ca, cb = costs_of(a, rule), costs_of(b, rule)
    return all(ca[k] <= cb[k] for k in COSTS) and any(ca[k] < cb[k] for k in COSTS)


def _fmt(key: str, value: float) -> str:
    unit = COSTS[key].unit
    return f"{value:,.0f} {unit}" if value >= 10 or unit == "tokens" else f"{value:,.2g} {unit}"


def narrow(left: list[Candidate], rule: Rule) -> tuple[list[Candidate], list[str]]:
    """Step 4: keep, axis by axis, the rungs within cost_margin x the lowest; say what each axis decided."""
    decided = []
    for key, cost in COSTS.items():
        values = {c.name: cost.value(c, rule) for c in left}
        lowest = min(values.values())
        keep = [c for c in left if values[c.name] <= rule.cost_margin * lowest]
        dropped = [c for c in left if c not in keep]
        if dropped:
            cheapest = min(keep, key=lambda c: values[c.name])
            decided.append(
                f"{cost.label}: {cheapest.name} {_fmt(key, values[cheapest.name])} against "
                + ", ".join(f"{c.name} {_fmt(key, values[c.name])}" for c in dropped)
            )
        left = keep
    return left, decided


def decide(candidates: list[Candidate], rule: Rule, metric: str = "metric") -> Decision:
    """The pick and its why (see the module docstring for the rule)."""
    if not candidates:
        return Decision(None, "No rung finished, so there is nothing to recommend.")
    out = {c.name: r for c in candidates if (r := _limits(c, rule, metric))}
    admitted = [c for c in candidates if c.name not in out]
    if not admitted:
        return Decision(
            None, "Every rung is ruled out: " + "; ".join(f"{n}: {r}" for n, r in out.items()), ruled_out=out
        )
    best = max(admitted, key=lambda c: c.metric)
    vs = {c.name: paired_bootstrap(c.scores, best.scores) for c in admitted}
    for c in admitted:
        diff, low, high = vs[c.name]
        if high < -rule.tolerance:
            out[c.name] = (
                f"worse than {best.name} by more than tolerance={rule.tolerance:g}: {diff:+.2f} [{low:+.2f}, {high:+.2f}]"
            )
    left = [c for c in admitted if c.name not in out]
    for c in left:
        winner = next((d for d in left if d is not c and dominates(d, c, rule)), None)
        if winner is not None:
            out[c.name] = (
                f"dominated by {winner.name} (not worse on {metric}, no costlier anywhere, cheaper somewhere)"
            )
    left = [c for c in left if c.name not in out]
    left, decided = narrow(left, rule)
    pick = min(left, key=lambda c: (compute_s(c, rule), -c.metric))
    if len(left) > 1:
        decided.append("then the lowest compute among " + ", ".join(c.name for c in left))
    elif not decided:
        decided.append("the only rung the limits, the quality rule and dominance leave")
    return Decision(pick.name, explain(pick, best, vs, decided, rule, metric), best.name, out, vs)


def explain(pick: Candidate, best: Candidate, vs: dict, decided: list[str], rule: Rule, metric: str) -> str:
    diff, low, high = vs[pick.name]
    ties = [n for n, d in vs.items() if n != pick.name and d == (0.0, 0.0, 0.0)]
    quality = (
        f"the best {metric}" + (f" (tied row for row with {', '.join(ties)})" if ties else "")
        if pick is best
        else f"not resolved as worse than the best ({best.name}) by more than {rule.tolerance:g}: "
        f"{diff:+.2f} [{low:+.2f}, {high:+.2f}]"
    )
    costs = costs_of(pick, rule)
    why = (
        f"**{pick.name}**: {metric} {pick.metric:.2f}, {quality}. Its costs: compute {_fmt('compute_s', costs['compute_s'])} "
        f"(training {pick.train_cpu_s:,.0f} CPU s + {rule.answers:,} answers x {pick.seconds_per_answer:.3f} CPU s), "
        f"peak memory {costs['peak_memory_mb']:,.0f} MB, storage {costs['stored_mb']:,.1f} MB, "
        f"{costs['tokens_per_answer']:,.0f} tokens per answer."
    )
    if decided:
        why += f" Decided by (costs within {rule.cost_margin:g}x count as equal): " + "; ".join(decided) + "."
    return why
