"""A reward model's quality gate: is it clearly better than answers a rule of thumb would pick?

    verdict = gate(held_pairs, r_chosen, r_rejected, train_pairs)     # pure: scores already computed
    verdict["passed"], verdict["reason"]
    check_before_use("runs/rm/final", strict=False, use="best-of-n")  # warns, or refuses under strict

On the same held-out pairs the model's pairwise accuracy (with a 95% bootstrap interval) is compared
with null baselines (the table BASELINES): pick the longer answer, the shorter one, the one shown first,
and a bag-of-words logistic regression fitted on the training pairs. Also reported: the Pearson
correlation of the score with answer length (characters) and the expected calibration error of
P(first > second) = sigmoid(r_first - r_second).

The rule: the gate passes when the lower end of the 95% paired-bootstrap interval of
(model accuracy - best baseline accuracy) is above 0, the best baseline being the one with the
highest accuracy on these pairs. A tie (equal scores, equal lengths) earns half a point everywhere.
Few pairs give wide intervals: a model checked on 10 pairs cannot pass, on purpose.

The verdict is saved as gate.json in the run folder and in final/; a reward model without one (older
runs) is gated when it is used, if its run's config names its held-out pairs.
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunelab.errors import TunelabError

RULE = (
    "passes when the lower end of the 95% paired-bootstrap interval of "
    "(model accuracy - best null baseline accuracy) is above 0"
)


def credit(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per pair: 1 when the chosen answer's value is higher, 0.5 on a tie, 0 when lower."""
    return np.where(first > second, 1.0, np.where(first == second, 0.5, 0.0))


@dataclass
class GateInputs:
    """What the baselines may look at besides the held-out pairs themselves."""

    train_pairs: list[dict]  # the reward model's training pairs (the bag-of-words model is fitted on them)
    chosen_first: np.ndarray  # (N,) bool: the order each held-out pair is shown in (seeded coin flips)


def _lengths(pairs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.array([len(p["chosen"]) for p in pairs], dtype=float),
        np.array([len(p["rejected"]) for p in pairs], dtype=float),
    )


def longer_answer(pairs: list[dict], inputs: GateInputs) -> np.ndarray:
    return credit(*_lengths(pairs))


def shorter_answer(pairs: list[dict], inputs: GateInputs) -> np.ndarray:
    chosen, rejected = _lengths(pairs)
    return credit(-chosen, -rejected)


def first_shown(pairs: list[dict], inputs: GateInputs) -> np.ndarray:
    return inputs.chosen_first.astype(float)


def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def fit_bag_of_words(
    train_pairs: list[dict],
    *,
    max_vocab: int = 2000,
    max_pairs: int = 4000,
    l2: float = 1e-2,
    steps: int = 300,
    lr: float = 0.5,
):
    """Logistic regression P(a beats b) = sigmoid(w . (counts(a) - counts(b))) on the training pairs.

    No bias: swapping a and b flips the prediction, so each pair is used in both orders. Features are
    word counts plus the word count itself, each scaled by its standard deviation; plain gradient descent.
    At most `max_pairs` training pairs (a seeded sample) keep the (2N, V) matrix small. Returns a
    function answer -> score.
    """
    if len(train_pairs) > max_pairs:
        train_pairs = random.Random(0).sample(train_pairs, max_pairs)
    freq: dict[str, int] = {}
    for p in train_pairs:
        for w in words(p["chosen"]) + words(p["rejected"]):
            freq[w] = freq.get(w, 0) + 1
    vocab = {w: i for i, w in enumerate(sorted(freq, key=lambda w: (-freq[w], w))[:max_vocab])}

    def features(text: str) -> np.ndarray:
        toks = words(text)
        row = np.zeros(len(vocab) + 1)
        for t in toks:
            if t in vocab:
                row[vocab[t]] += 1
        row[-1] = len(toks)
        return row

    if not train_pairs:
        return lambda text: 0.0
    diff = np.stack([features(p["chosen"]) - features(p["rejected"]) for p in train_pairs])  # (N, V+1)
    X = np.concatenate([diff, -diff])  # (2N, V+1)
    y = np.concatenate([np.ones(len(diff)), np.zeros(len(diff))])
    scale = X.std(axis=0)
    scale[scale == 0] = 1.0
    X = X / scale
    w = np.zeros(X.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(X @ w)))
        w -= lr * (X.T @ (p - y) / len(y) + l2 * w)
    w = w / scale
    return lambda text: float(features(text) @ w)


def bag_of_words(pairs: list[dict], inputs: GateInputs) -> np.ndarray:
    score = fit_bag_of_words(inputs.train_pairs)
    return credit(
        np.array([score(p["chosen"]) for p in pairs]), np.array([score(p["rejected"]) for p in pairs])
    )


Baseline = Callable[[list[dict], GateInputs], np.ndarray]
BASELINES: dict[str, Baseline] = {
    "longer answer": longer_answer,
    "shorter answer": shorter_answer,
    "first shown": first_shown,
    "bag of words": bag_of_words,
}


def shown_order(n: int, seed: int) -> np.ndarray:
    """(n,) bool: whether the chosen answer of each held-out pair is shown first (seeded)."""
    return np.random.default_rng(seed).random(n) < 0.5


def bootstrap(credits: dict[str, np.ndarray], resamples: int, seed: int) -> dict[str, np.ndarray]:
    """(resamples,) resampled means of each credit vector, all on the same resampled pairs (paired)."""
    n = len(next(iter(credits.values())))
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))  # (R, N)
    return {name: c[idx].mean(axis=1) for name, c in credits.items()}


def _interval(mean: float, draws: np.ndarray) -> dict:
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"mean": float(mean), "low": float(low), "high": float(high)}


def ece(first_minus_second: np.ndarray, first_is_chosen: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of P(first is chosen) = sigmoid(r_first - r_second), equal-width bins."""
    predicted = 1 / (1 + np.exp(-first_minus_second))
    observed = first_is_chosen.astype(float)
    which = np.minimum((predicted * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(predicted[inside].mean() - observed[inside].mean())
    return float(total / max(1, len(predicted)))


def length_correlation(pairs: list[dict], r_chosen, r_rejected) -> float | None:
    """Pearson correlation of the score with answer length (characters) over every held-out answer."""
    lengths = np.concatenate(_lengths(pairs))
    scores = np.concatenate([np.asarray(r_chosen, float), np.asarray(r_rejected, float)])
    if lengths.std() == 0 or scores.std() == 0:
        return None  # undefined: every answer as long as the others, or every score equal
    return float(np.corrcoef(lengths, scores)[0, 1])


def gate(
    held_pairs: list[dict],
    r_chosen,
    r_rejected,
    train_pairs: list[dict],
    *,
    seed: int = 0,
    resamples: int = 1000,
) -> dict:
    """The verdict on scores of held-out pairs (see the module docstring for the rule)."""
    if not held_pairs:
        raise TunelabError("The reward-model gate needs held-out preference pairs; there are none.")
    r_chosen, r_rejected = np.asarray(r_chosen, float), np.asarray(r_rejected, float)
    inputs = GateInputs(train_pairs, shown_order(len(held_pairs), seed))
    credits = {"model": credit(r_chosen, r_rejected)}
    credits.update({name: fn(held_pairs, inputs) for name, fn in BASELINES.items()})
    draws = bootstrap(credits, resamples, seed)
    means = {name: float(c.mean()) for name, c in credits.items()}
    best = max(BASELINES, key=lambda name: means[name])  # ties: the first in the table
    baselines = {}
    for name in BASELINES:
        row = _interval(means[name], draws[name])
        row["difference"] = _interval(means["model"] - means[name], draws["model"] - draws[name])
        baselines[name] = row
    diff = baselines[best]["difference"]
    passed = diff["low"] > 0
    acc = _interval(means["model"], draws["model"])
    first_minus_second = np.where(inputs.chosen_first, r_chosen - r_rejected, r_rejected - r_chosen)
    reason = (
        f"accuracy {acc['mean']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}] vs the best null baseline "
        f"'{best}' {means[best]:.3f}: difference {diff['mean']:+.3f}, 95% interval "
        f"[{diff['low']:+.3f}, {diff['high']:+.3f}]"
        + (" (clearly better)" if passed else " (not clearly better)")
    )
    return {
        "passed": bool(passed),
        "rule": RULE,
        "reason": reason,
        "pairs": len(held_pairs),
        "train_pairs": len(train_pairs),
        "accuracy": acc,
        "baselines": baselines,
        "best_baseline": best,
        "length_correlation": length_correlation(held_pairs, r_chosen, r_rejected),
        "ece": ece(first_minus_second, inputs.chosen_first),
        "resamples": resamples,
        "seed": seed,
    }


def run_gate(
    scorer, held_pairs: list[dict], train_pairs: list[dict], *, seed: int = 0, resamples: int = 1000
):
    """Score the held-out pairs with a RewardScorer, then `gate`."""
    r_chosen = scorer.score([(p["prompt"], p["chosen"]) for p in held_pairs])
    r_rejected = scorer.score([(p["prompt"], p["rejected"]) for p in held_pairs])
    return gate(held_pairs, r_chosen, r_rejected, train_pairs, seed=seed, resamples=resamples)


def markdown(verdict: dict) -> str:
    """The report.md section."""
    lines = [
        "## Reward-model gate: " + ("PASSED" if verdict["passed"] else "NOT PASSED"),
        "",
        f"{verdict['pairs']} held-out pairs; rule: {verdict['rule']}. {verdict['reason']}.",
        "",
        "| ranker | accuracy (95% CI) | model minus it (95% CI) |",
        "|---|---|---|",
    ]
    acc = verdict["accuracy"]
    lines.append(f"| reward model | {acc['mean']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}] | |")
    for name, row in verdict["baselines"].items():
        d = row["difference"]
        mark = " (best baseline)" if name == verdict["best_baseline"] else ""
        lines.append(
            f"| {name}{mark} | {row['mean']:.3f} [{row['low']:.3f}, {row['high']:.3f}] | "
            f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] |"
        )
    corr = verdict["length_correlation"]
    lines += [
        "",
        f"- score vs answer length (characters): Pearson r = {'n/a' if corr is None else f'{corr:+.2f}'}",
        f"- expected calibration error: {verdict['ece']:.3f}",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the verdict on disk, and before use


def save_verdict(verdict: dict, run_dir: Path) -> None:
    """gate.json in the run folder and in final/ (so that a copied final/ keeps its verdict)."""
    text = json.dumps(verdict, indent=1)
    (run_dir / "gate.json").write_text(text)
    if (run_dir / "final").is_dir():
        (run_dir / "final" / "gate.json").write_text(text)


def saved_verdict(rm_path: str | Path) -> dict | None:
    """The verdict saved with the model (final/gate.json), or None."""
    saved = Path(rm_path) / "gate.json"
    return json.loads(saved.read_text()) if saved.is_file() else None


def pairs_of_run(rm_path: str | Path) -> tuple[list[dict], list[dict]] | None:
    """(training pairs, held-out pairs) of the `tunelab rm` run `rm_path` came from, re-taken from its
    config.yaml (data.eval, or the seeded data.eval_split of data.train); None when not known."""
    import yaml

    from tunelab.data.read import read_dataset
    from tunelab.data.split import split_holdout

    config = Path(rm_path).parent / "config.yaml"
    if not config.is_file():
        return None
    cfg = yaml.safe_load(config.read_text()) or {}
    data = cfg.get("data") or {}
    try:
        train = read_dataset(data["train"], "preference") if data.get("train") else []
        if data.get("eval"):
            return train, read_dataset(data["eval"], "preference")
        train, held = split_holdout(train, float(data.get("eval_split") or 0), int(cfg.get("seed", 0)))
    except (TunelabError, OSError):
        return None  # the files moved or changed: not known
    return (train, held) if held else None


def check_before_use(rm_path: str, *, strict: bool, use: str, scorer=None, warn=None) -> dict | None:
    """The gate's verdict on `rm_path` before it is used for `use` (score, select, best-of-n, ...):
    the saved one, else computed now from the run's held-out pairs. A failing (or unknown) verdict is a
    warning, or under `strict` a TunelabError."""
    warn = warn or (lambda text: print(f"warning: {text}", file=sys.stderr))
    verdict = saved_verdict(rm_path)
    if verdict is None:
        pairs = pairs_of_run(rm_path)
        if pairs is not None:
            if scorer is None:
                from tunelab.models.scorer import RewardScorer

                scorer = RewardScorer(rm_path)
            verdict = run_gate(scorer, pairs[1], pairs[0])
    if verdict is None:
        text = (
            f"reward model {rm_path} has no quality-gate verdict (no gate.json) and its held-out pairs "
            f"are not known, so it was not checked before {use}."
        )
        if strict:
            raise TunelabError(text + " Under strict only a reward model that passed the gate is used.")
        warn(text)
        return None
    if not verdict["passed"]:
        text = f"reward model {rm_path} did not pass its quality gate: {verdict['reason']}."
        if verdict.get("length_correlation") is not None and abs(verdict["length_correlation"]) > 0.5:
            text += f" Its scores follow answer length (r = {verdict['length_correlation']:+.2f})."
        if strict:
            raise TunelabError(
                text + f" Refusing to use it for {use} under strict; retrain it on more or better pairs, "
                "or leave strict off to use it anyway."
            )
        warn(text + f" Using it for {use} anyway.")
    return verdict


def summary_line(verdict: dict | None) -> str:
    if verdict is None:
        return "reward-model gate: not checked"
    return f"reward-model gate: {'passed' if verdict['passed'] else 'NOT passed'}: {verdict['reason']}"
