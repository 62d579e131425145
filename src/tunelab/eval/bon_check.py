"""Best-of-n that checks itself: is picking the reward model's favourite of n samples better than
greedy decoding, and better than picking one of the n at random?

    check = best_of_n_check(task, rows, bon_result, greedy_result, rm="runs/rm/final")
    check["verdict"]      # "helps" | "hurts" | "unclear";  check_line(check) for a report

`compare` is the pure part: per row the task metric of the reward model's pick, of the greedy answer,
and of each of the n samples. A random pick is scored by its expectation (the mean of the n samples'
metrics), not by one draw; the oracle (the best of the n by the metric) shows the room left. The
differences get paired-bootstrap 95% intervals. Verdict: "hurts" when the pick is clearly worse than
greedy or than a random pick (interval below 0), "helps" when clearly better than both (above 0),
else "unclear".
"""

from __future__ import annotations

import numpy as np


def _interval(draws: np.ndarray, mean: float) -> dict:
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"mean": float(mean), "low": float(low), "high": float(high)}


def compare(
    picked: list[float],
    greedy: list[float],
    samples: list[list[float]],
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Mean metric of each way of answering, the pick's differences with intervals, and the verdict."""
    ways = {
        "best_of_n": np.asarray(picked, float),
        "greedy": np.asarray(greedy, float),
        "random_pick": np.array([np.mean(s) for s in samples]),
        "oracle": np.array([np.max(s) for s in samples]),
    }
    n = len(picked)
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))  # (R, rows) paired resamples
    draws = {name: values[idx].mean(axis=1) for name, values in ways.items()}
    out = {"rows": n, **{name: float(values.mean()) for name, values in ways.items()}}
    for other in ("greedy", "random_pick"):
        diff = ways["best_of_n"].mean() - ways[other].mean()
        out[f"vs_{other}"] = _interval(draws["best_of_n"] - draws[other], diff)
    worse = out["vs_greedy"]["high"] < 0 or out["vs_random_pick"]["high"] < 0
    better = out["vs_greedy"]["low"] > 0 and out["vs_random_pick"]["low"] > 0
    out["verdict"] = "hurts" if worse else "helps" if better else "unclear"
    return out


def best_of_n_check(
    task, rows: list[dict], bon_result, greedy_result, *, rm: str | None = None, seed: int = 0
) -> dict:
    """`compare` on harness results (tunelab.eval.harness.StrategyResult) of the same rows: best_of_n
    (whose records hold each sample in their trace) and a greedy strategy (zero_shot). Adds the reward
    model's quality-gate verdict when `rm` has one saved."""
    from tunelab.models.rm_gate import saved_verdict

    metric = task.metric
    picked = [r["scores"][metric] for r in bon_result.rows]
    greedy = [r["scores"][metric] for r in greedy_result.rows]
    samples = []
    for row, record in zip(rows, bon_result.rows, strict=True):
        texts = [t["text"] for t in record["trace"] if t["step"] == "sample"]
        samples.append([task.score(task.answer(text), row)[metric] for text in texts])
    check = compare(picked, greedy, samples, seed=seed)
    check["metric"] = metric
    verdict = saved_verdict(rm) if rm else None
    check["gate"] = None if verdict is None else {"passed": verdict["passed"], "reason": verdict["reason"]}
    return check


VERDICT_TEXT = {
    "helps": "the reward model's pick helps",
    "hurts": "the reward model's pick HURTS",
    "unclear": "no clear difference",
}


def check_line(check: dict) -> str:
    """One line for a report: the pick vs greedy vs random, the verdict, the gate."""
    g, r = check["vs_greedy"], check["vs_random_pick"]
    gate = check.get("gate")
    gate_text = (
        "gate not checked" if gate is None else ("gate passed" if gate["passed"] else "gate NOT passed")
    )
    return (
        f"best-of-n {check['metric']} {check['best_of_n']:.3f} vs greedy {check['greedy']:.3f} "
        f"(diff {g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]) vs random pick {check['random_pick']:.3f} "
        f"(diff {r['mean']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]), oracle {check['oracle']:.3f}: "
        f"{VERDICT_TEXT[check['verdict']]}; {gate_text}"
    )
