"""A trained reward model and its uses: score answers, pick the best model, rank sampled answers.

    from tunelab.rm import RewardScorer
    rm = RewardScorer("runs/rm/final")
    rm.score([("What is 2+2?", "4"), ("What is 2+2?", "5")])      # -> [r1, r2]; higher is better

    select(rm, ["runs/a/final", "runs/b/final"], prompts)         # rank models by mean reward
    best_of_n(rm, "smollm2-135m", prompts, n=8)                    # best of n sampled answers per prompt

Answers are rendered exactly as the reward model saw them in training (chat template, or prompt +
separator + answer + EOS); scores do not depend on batch size or padding side.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.data.pairs import render_answer
from tunelab.data.render import RenderOptions

Item = str | tuple[str, str]  # a rendered text, or (prompt, answer)


def render_options_for(path: str) -> RenderOptions:
    """The render options a tunelab run trained with (tunelab.json next to the weights), else defaults."""
    meta = Path(path) / "tunelab.json"
    if meta.is_file():
        render = json.loads(meta.read_text()).get("render", {})
        return RenderOptions(**render)
    return RenderOptions()


class RewardScorer:
    def __init__(
        self, path: str, *, batch_size: int = 16, model=None, tok=None, opts: RenderOptions | None = None
    ):
        from tunelab.models.load import load_model

        if model is None:
            model, tok = load_model(path, head="reward")
        self.model, self.tok, self.batch_size = model.eval(), tok, batch_size
        self.opts = opts or render_options_for(path)

    def ids(self, item: Item) -> list[int]:
        if isinstance(item, str):
            return self.tok(item, add_special_tokens=False)["input_ids"]
        prompt, answer = item
        return render_answer(self.tok, prompt, answer, self.opts)

    @torch.no_grad()
    def score(self, items: list[Item]) -> list[float]:
        from tunelab.models.reward import rewards

        pad = self.tok.pad_token_id
        out: list[float] = []
        for start in range(0, len(items), self.batch_size):
            seqs = [self.ids(it) for it in items[start : start + self.batch_size]]
            T = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), T), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), T), dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
                mask[i, : len(s)] = 1
            device = self.model.device
            out += rewards(self.model, ids.to(device), mask.to(device)).tolist()
        return out


def score(rm: str | RewardScorer, items: list[Item], batch_size: int = 16) -> list[float]:
    """Rewards for texts or (prompt, answer) pairs: `tunelab.rm.score("runs/rm/final", items)`."""
    scorer = rm if isinstance(rm, RewardScorer) else RewardScorer(rm, batch_size=batch_size)
    return scorer.score(items)


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
    from tunelab.generation import generate
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
    return sorted(ranked, key=lambda c: c.mean_reward, reverse=True)


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
    from tunelab.generation import generate
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
        group = sorted(
            zip(scores[i * n : (i + 1) * n], answers[i * n : (i + 1) * n], strict=True), key=lambda x: -x[0]
        )
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
