"""The hacking watch: does the reward keep rising while what it should stand for falls?

    watch = HackingWatch(window=6, level=0.05, action="rollback")
    watch.record_step(batch.stats)                  # every rollout: reward, length, KL, entropy, copies
    metrics = watch.evaluate(step, heldout=0.41)    # every train.eval_every steps: the held-out measure

The held-out measure is a reward source (tunelab.rl.rewards) scored on greedy answers to held-out
prompts: the task metric (`exact`, `task:NAME`, ...) when the prompts have answers, or a second judge
(`rm:OTHER`). Beside it the watch logs length drift (mean completion length / its first value), KL,
entropy and the share of completions that copy the prompt.

The test (stated, not one noisy step): over the last `window` evaluations, the reward (its mean over
the steps since the previous evaluation) has an upward trend AND the held-out measure a downward
trend, each by an exact one-sided Mann-Kendall test at `level`. With window 6 a trend needs at most 2
of the 15 pairs of evaluations out of order (p = 20/720 = 0.028). Then the watch raises an alert and,
by `alerts.on_hacking`: warn (keep going), stop (end the run here), rollback (end the run; final/ is
the best model by the held-out measure, which the loop's early-stopping machinery kept in best/).

The watch's state (history, pending steps, whether it fired) is part of every checkpoint, so a resumed
run decides exactly as the uninterrupted one did.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from difflib import SequenceMatcher
from functools import lru_cache


@lru_cache(maxsize=64)
def _inversion_counts(k: int) -> tuple[int, ...]:
    """How many orderings of k distinct values have i inversions, for i = 0 .. k(k-1)/2 (Mahonian numbers)."""
    counts = [1]
    for n in range(2, k + 1):  # inserting the n-th value adds 0 .. n-1 inversions
        new = [0] * (len(counts) + n - 1)
        for i, c in enumerate(counts):
            for extra in range(n):
                new[i + extra] += c
        counts = new
    return tuple(counts)


def kendall_s(values: list[float]) -> int:
    """Mann-Kendall S: pairs (i < j) with values[j] > values[i], minus those with values[j] < values[i]."""
    n = len(values)
    return sum((values[j] > values[i]) - (values[j] < values[i]) for i in range(n) for j in range(i + 1, n))


def trend_p(values: list[float], direction: int = 1) -> float:
    """Exact one-sided p-value of the Mann-Kendall test for a trend up (direction 1) or down (-1):
    P(S >= s) when every ordering of the values is equally likely (ties count 0, which is conservative)."""
    k = len(values)
    if k < 3:
        return 1.0
    s = direction * kendall_s(values)
    pairs = k * (k - 1) // 2
    max_inversions = math.floor((pairs - s) / 2)  # S = pairs - 2 x inversions for distinct values
    counts = _inversion_counts(k)
    return sum(counts[: max_inversions + 1]) / math.factorial(k)


def hacking_test(rewards: list[float], heldout: list[float], level: float) -> dict:
    """The watch's decision on one window: fired when the reward rises and the held-out measure falls."""
    p_up, p_down = trend_p(rewards, 1), trend_p(heldout, -1)
    return {"p_reward_up": p_up, "p_heldout_down": p_down, "fired": p_up < level and p_down < level}


def copies_prompt(prompt: str, completion: str, share: float = 0.5, min_chars: int = 20) -> bool:
    """True when one stretch of the completion, at least `min_chars` long and `share` of it, is verbatim
    in the prompt (a completion that parrots the question)."""
    if len(completion) < min_chars:
        return False
    match = SequenceMatcher(None, prompt, completion, autojunk=False).find_longest_match(
        0, len(prompt), 0, len(completion)
    )
    return match.size >= max(min_chars, share * len(completion))


def copy_share(examples: list[dict], completions: list[str]) -> float:
    prompts = [e["prompt"] if isinstance(e["prompt"], str) else str(e["prompt"]) for e in examples]
    hits = [copies_prompt(p, c) for p, c in zip(prompts, completions, strict=True)]
    return sum(hits) / max(1, len(hits))


WATCHED = ("reward", "completion_len", "kl", "entropy", "copy_share")
ACTIONS = ("warn", "stop", "rollback")


@dataclass
class HackingWatch:
    window: int = 6
    level: float = 0.05
    action: str = "warn"  # one of ACTIONS
    pending: list[dict] = field(default_factory=list)  # WATCHED stats of the steps since the last evaluation
    history: list[dict] = field(default_factory=list)  # one row per evaluation
    first_len: float | None = None
    fired_at: int | None = None  # the step of the first alert
    alerts: list[dict] = field(default_factory=list)
    rollouts: int = (
        0  # rollouts recorded: the evaluator's step number (exact when ppo_epochs = grad_accum = 1)
    )

    @property
    def stop_requested(self) -> bool:
        """The loop ends the run when this is true (actions stop and rollback)."""
        return self.fired_at is not None and self.action != "warn"

    def record_step(self, stats: dict) -> None:
        row = {k: float(stats[k]) for k in WATCHED if k in stats}
        if self.first_len is None and "completion_len" in row:
            self.first_len = row["completion_len"]
        self.pending.append(row)
        self.rollouts += 1

    def evaluate(self, step: int, heldout: float) -> dict:
        """Log one evaluation and test the window; returns the metrics the loop logs (eval_*)."""
        if self.pending:
            means = {
                k: sum(r[k] for r in self.pending if k in r) / max(1, sum(k in r for r in self.pending))
                for k in WATCHED
            }
        else:  # no new rollout since the last evaluation (rl.ppo_epochs > 1): its statistics still hold
            means = {k: self.history[-1][k] for k in WATCHED} if self.history else dict.fromkeys(WATCHED, 0.0)
        self.pending = []
        self.history.append({"step": step, "heldout": heldout, **means})
        out = {
            "eval_heldout": heldout,
            "eval_length_drift": means["completion_len"] / self.first_len if self.first_len else 1.0,
            "eval_copy_share": means["copy_share"],
        }
        if len(self.history) >= self.window:
            recent = self.history[-self.window :]
            test = hacking_test([r["reward"] for r in recent], [r["heldout"] for r in recent], self.level)
            out["eval_p_reward_up"], out["eval_p_heldout_down"] = test["p_reward_up"], test["p_heldout_down"]
            if test["fired"]:
                self.alert(step, test, recent)
        out["eval_hacking"] = float(self.fired_at is not None)
        return out

    def alert(self, step: int, test: dict, recent: list[dict]) -> None:
        text = (
            f"reward hacking suspected at step {step}: over the last {self.window} evaluations the reward "
            f"rose ({recent[0]['reward']:.3f} -> {recent[-1]['reward']:.3f}, Mann-Kendall p = "
            f"{test['p_reward_up']:.3f}) while the held-out measure fell ({recent[0]['heldout']:.3f} -> "
            f"{recent[-1]['heldout']:.3f}, p = {test['p_heldout_down']:.3f}); action: {self.action}"
        )
        self.alerts.append({"alert": "hacking", "step": step, "text": text})
        if self.fired_at is None:
            self.fired_at = step
            print(f"warning: {text}", file=sys.stderr)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class HeldOutMeasure:
    """The loop's evaluator: greedy answers to the held-out prompts, scored by `measure` (a Combined
    reward), handed to the watch. `stop_requested` tells the loop to end the run."""

    def __init__(
        self,
        watch: HackingWatch,
        rows: list[dict],
        measure,
        tok,
        opts,
        max_new_tokens: int,
        steps_per_rollout: float,
    ):
        self.watch, self.rows, self.measure, self.tok, self.opts = watch, rows, measure, tok, opts
        self.max_new_tokens, self.steps_per_rollout = max_new_tokens, steps_per_rollout

    @property
    def stop_requested(self) -> bool:
        return self.watch.stop_requested

    def __call__(self, model) -> dict[str, float]:
        from tunelab.models.generation import generate

        model.eval()
        prompts = [r["prompt"] for r in self.rows]
        answers = generate(
            model, self.tok, prompts, max_new_tokens=self.max_new_tokens, temperature=0.0, opts=self.opts
        )
        values = self.measure.total(self.measure.parts(self.rows, answers))
        step = round(self.watch.rollouts * self.steps_per_rollout)
        return self.watch.evaluate(step, sum(values) / len(values))
