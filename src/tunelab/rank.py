"""Ranking by a reward model: which model answers best (`select`), which of n sampled answers is best
(`best_of_n`), and the SFT / preference data that rejection sampling makes of the ranking.

    select(rm, ["runs/a/final", "runs/b/final"], prompts)         # rank models by mean reward
    best_of_n(rm, "smollm2-135m", prompts, n=8)                    # best of n sampled answers per prompt

One ranker (`best_first`) orders everything here and the prompting strategy best_of_n: highest reward
first, ties kept in their given order.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from tunelab.models.scorer import RewardScorer, render_options_for


def best_first(scores: list[float]) -> list[int]:
    """Indices of `scores`, highest first; equal scores keep their order (a stable sort)."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal 95% interval."""
    mean = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, half


@dataclass
class Candidate:
    name: str
    mean_reward: float
    ci95: float
    answers: list[str]


def select(
    rm: RewardScorer,
    candidates: list[str],
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[Candidate]:
    """Each candidate model answers the same prompts (same seed); ranked by mean reward, best first."""
    from tunelab.models.generation import generate
    from tunelab.models.load import load_model

    ranked = []
    for name in candidates:
        model, tok = load_model(name)
        answers = generate(
            model,
            tok,
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            opts=render_options_for(name),
        )
        mean, half = mean_ci(rm.score(list(zip(prompts, answers, strict=True))))
        ranked.append(Candidate(name, mean, half, answers))
        del model
    return [ranked[i] for i in best_first([c.mean_reward for c in ranked])]


def best_of_n(
    rm: RewardScorer,
    model_ref: str,
    prompts: list[str],
    *,
    n: int = 4,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_p: float = 1.0,
    seed: int = 0,
    model=None,
    tok=None,
) -> list[dict]:
    """n sampled answers per prompt, ranked by reward: [{prompt, answers (best first), rewards, best, worst}]."""
    from tunelab.models.generation import generate
    from tunelab.models.load import load_model

    if model is None:
        model, tok = load_model(model_ref)
    repeated = [p for p in prompts for _ in range(n)]
    answers = generate(
        model,
        tok,
        repeated,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        opts=render_options_for(model_ref),
    )
    scores = rm.score(list(zip(repeated, answers, strict=True)))
    results = []
    for i, prompt in enumerate(prompts):
        these = list(zip(scores[i * n : (i + 1) * n], answers[i * n : (i + 1) * n], strict=True))
        group = [these[j] for j in best_first([r for r, _ in these])]
        results.append(
            {
                "prompt": prompt,
                "answers": [a for _, a in group],
                "rewards": [r for r, _ in group],
                "best": group[0][1],
                "worst": group[-1][1],
            }
        )
    return results


def write_rejection_sampling(results: list[dict], folder: Path) -> dict[str, Path]:
    """sft.jsonl (prompt + best answer) and preference.jsonl (best vs worst) for the next round."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "sft": folder / "sft.jsonl",
        "preference": folder / "preference.jsonl",
        "all": folder / "ranked.jsonl",
    }
    with (
        paths["sft"].open("w") as sft,
        paths["preference"].open("w") as pref,
        paths["all"].open("w") as everything,
    ):
        for r in results:
            sft.write(json.dumps({"prompt": r["prompt"], "completion": r["best"]}) + "\n")
            if r["best"] != r["worst"] and r["rewards"][0] > r["rewards"][-1]:
                margin = r["rewards"][0] - r["rewards"][-1]
                pref.write(
                    json.dumps(
                        {
                            "prompt": r["prompt"],
                            "chosen": r["best"],
                            "rejected": r["worst"],
                            "margin": 0.0,
                            "reward_gap": margin,
                        }
                    )
                    + "\n"
                )
            everything.write(json.dumps(r) + "\n")
    return paths
