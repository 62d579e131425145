"""Ways of using a model without training it: each strategy is a plain function over a batch of rows.

    outcomes = STRATEGIES["cot"](lm, task, rows, PromptingOptions())   # one Outcome per row
    outcomes[0].answer, outcomes[0].output, outcomes[0].calls, outcomes[0].tokens

zero_shot    the task's prompt as it is
rules        the task's rule list written down before the prompt (system message or user preamble)
cot          reason step by step, end with "Answer: ..."; the answer is taken after the marker
reflection   answer -> critique -> revised answer, N rounds; stops when the critique finds no errors
few_shot     k worked examples (fixed, random or most similar) as earlier turns, fitted to the context
self_consistency  n sampled chains of thought, majority vote on the extracted answer
best_of_n    n sampled answers, a reward model keeps the best (prompting.rm)

Every strategy sends all its rows to the model at once (the model batches), so a reflection round
is one batched call for every row still being revised.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from tunelab.config.schema import PromptingOptions
from tunelab.errors import TunelabError
from tunelab.prompting.fewshot import choose_shots, fit_shots
from tunelab.prompting.lm import LM, Conversation, Reply, assistant, user
from tunelab.tasks.metrics import after_marker
from tunelab.tasks.task import Task

NO_ERRORS = re.compile(r"(?i)\bno (?:errors?|mistakes?|issues?)\b")


@dataclass
class Outcome:
    """What one strategy made of one row."""

    output: str = ""  # the model text the answer was taken from
    answer: str = ""  # the extracted answer the metric sees
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    shots: int | None = None  # few-shot examples that fit
    trace: list[dict] = field(default_factory=list)  # every call: {"step", "text"}

    def add(self, step: str, reply: Reply) -> None:
        self.calls += 1
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        self.trace.append({"step": step, "text": reply.text})

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _system(task: Task, extra: str | None = None) -> Conversation:
    text = "\n\n".join(t for t in (task.system, extra) if t)
    return [{"role": "system", "content": text}] if text else []


def _answer_length(task: Task, opts: PromptingOptions) -> int:
    return opts.max_new_tokens or task.max_new_tokens


def _run(
    lm: LM,
    task: Task,
    conversations: list[Conversation],
    *,
    max_new_tokens: int,
    take: Callable[[str], str],
    outcomes: list[Outcome] | None = None,
) -> list[Outcome]:
    """One batched call; each outcome records the reply and the answer `take(text)` extracts."""
    outcomes = outcomes or [Outcome() for _ in conversations]
    replies = lm.complete(conversations, max_new_tokens=max_new_tokens)
    for outcome, reply in zip(outcomes, replies, strict=True):
        outcome.add("answer", reply)
        outcome.output, outcome.answer = reply.text, take(reply.text)
    return outcomes


def zero_shot(lm: LM, task: Task, rows: list[dict], opts: PromptingOptions, seed: int = 0) -> list[Outcome]:
    conversations = [[*_system(task), user(task.prompt(r))] for r in rows]
    return _run(lm, task, conversations, max_new_tokens=_answer_length(task, opts), take=task.answer)


def rule_list(task: Task) -> str:
    if not task.rules:
        raise TunelabError(
            f"Task {task.name} has no rules, so the `rules` strategy has nothing to write down: add a "
            "`rules:` list to the task file."
        )
    return "Follow every one of these rules:\n" + "\n".join(f"{i}. {r}" for i, r in enumerate(task.rules, 1))


def rules(lm: LM, task: Task, rows: list[dict], opts: PromptingOptions, seed: int = 0) -> list[Outcome]:
    preamble = rule_list(task)
    if opts.rules_as == "system":
        conversations = [[*_system(task, preamble), user(task.prompt(r))] for r in rows]
    else:
        conversations = [[*_system(task), user(f"{preamble}\n\n{task.prompt(r)}")] for r in rows]
    return _run(lm, task, conversations, max_new_tokens=_answer_length(task, opts), take=task.answer)


def _cot_conversation(task: Task, row: dict, opts: PromptingOptions) -> Conversation:
    return [*_system(task), user(f"{task.prompt(row)}\n\n{opts.cot_instruction}")]


def final_answer(task: Task) -> Callable[[str], str]:
    """A chain of thought's answer: the text after the last 'Answer:' marker, then the task's extractor."""
    return lambda text: task.answer(after_marker(text))


def cot(lm: LM, task: Task, rows: list[dict], opts: PromptingOptions, seed: int = 0) -> list[Outcome]:
    conversations = [_cot_conversation(task, r, opts) for r in rows]
    return _run(lm, task, conversations, max_new_tokens=opts.cot_max_new_tokens, take=final_answer(task))


def reflection(lm: LM, task: Task, rows: list[dict], opts: PromptingOptions, seed: int = 0) -> list[Outcome]:
    """Answer, then up to N rounds of critique and revision; a row stops once its critique finds nothing."""
    questions = [[*_system(task), user(task.prompt(r))] for r in rows]
    length = _answer_length(task, opts)
    outcomes = _run(lm, task, questions, max_new_tokens=length, take=task.answer)
    active = list(range(len(rows)))
    for _ in range(opts.reflection_rounds):
        asked = {i: [*questions[i], assistant(outcomes[i].output), user(opts.critique)] for i in active}
        critiques = dict(zip(active, lm.complete(list(asked.values()), max_new_tokens=length), strict=True))
        for i, reply in critiques.items():
            outcomes[i].add("critique", reply)
        active = [i for i in active if not NO_ERRORS.search(critiques[i].text)]
        if not active:
            break
        revise = [[*asked[i], assistant(critiques[i].text), user(opts.revise)] for i in active]
        for i, reply in zip(active, lm.complete(revise, max_new_tokens=length), strict=True):
            outcomes[i].add("revision", reply)
            revised = task.answer(reply.text)
            if revised or not outcomes[i].answer:  # a revision with no answer in it keeps the last one
                outcomes[i].output, outcomes[i].answer = reply.text, revised
    return outcomes


def few_shot(lm: LM, task: Task, rows: list[dict], opts: PromptingOptions, seed: int = 0) -> list[Outcome]:
    """k worked examples as earlier turns (the most relevant next to the question), fitted to the context."""
    length = _answer_length(task, opts)
    budget = (opts.max_context or lm.max_context) - length
    conversations, used = [], []
    for row in rows:
        shots = choose_shots(
            task.train, row, k=opts.shots, how=opts.shot_selection, prompt_of=task.prompt, seed=seed
        )

        def build(chosen: list[dict], row: dict = row) -> Conversation:
            turns = [
                t for s in reversed(chosen) for t in (user(task.prompt(s)), assistant(task.reference(s)))
            ]
            return [*_system(task), *turns, user(task.prompt(row))]

        conversation, n = fit_shots(lm.count, build, shots, budget)
        conversations.append(conversation)
        used.append(n)
    outcomes = _run(lm, task, conversations, max_new_tokens=length, take=task.answer)
    for outcome, n in zip(outcomes, used, strict=True):
        outcome.shots = n
    return outcomes


def _sampled(
    lm: LM, conversations: list[Conversation], n: int, opts: PromptingOptions, length: int, seed: int
):
    """n samples per conversation: a list (per row) of n replies."""
    replies = lm.complete(
        [c for c in conversations for _ in range(n)],
        max_new_tokens=length,
        temperature=opts.temperature,
        seed=seed,
    )
    return [replies[i * n : (i + 1) * n] for i in range(len(conversations))]


def self_consistency(
    lm: LM, task: Task, rows: list[dict], opts: PromptingOptions, seed: int = 0
) -> list[Outcome]:
    """n sampled chains of thought; the most frequent non-empty answer wins (the first seen on a tie)."""
    take = final_answer(task)
    groups = _sampled(
        lm,
        [_cot_conversation(task, r, opts) for r in rows],
        opts.samples,
        opts,
        opts.cot_max_new_tokens,
        seed,
    )
    outcomes = []
    for group in groups:
        outcome = Outcome()
        answers = []
        for reply in group:
            outcome.add("sample", reply)
            answers.append(take(reply.text))
        votes = Counter(a for a in answers if a) or Counter(answers)
        winner = votes.most_common(1)[0][0]
        outcome.answer, outcome.output = winner, group[answers.index(winner)].text
        outcome.trace.append({"step": "vote", "text": dict(votes)})
        outcomes.append(outcome)
    return outcomes


@lru_cache(maxsize=2)
def _reward_scorer(path: str, strict: bool = False):
    """The reward model, once per path, after its quality gate (a warning, or a refusal when strict)."""
    from tunelab.models.rm_gate import check_before_use
    from tunelab.models.scorer import RewardScorer

    scorer = RewardScorer(path)
    check_before_use(path, strict=strict, use="best_of_n", scorer=scorer)
    return scorer


def best_of_n(lm: LM, task: Task, rows: list[dict], opts: PromptingOptions, seed: int = 0) -> list[Outcome]:
    """n sampled answers per row; the reward model's favourite is the answer."""
    if not opts.rm:
        raise TunelabError(
            "best_of_n needs a reward model: set prompting.rm=PATH (the final/ folder of a `tunelab rm` run)."
        )
    from tunelab.rank import best_first

    scorer = _reward_scorer(opts.rm, opts.rm_strict)
    groups = _sampled(
        lm,
        [[*_system(task), user(task.prompt(r))] for r in rows],
        opts.samples,
        opts,
        _answer_length(task, opts),
        seed,
    )
    outcomes = []
    for row, group in zip(rows, groups, strict=True):
        outcome = Outcome()
        for reply in group:
            outcome.add("sample", reply)
        rewards = scorer.score([(task.prompt(row), reply.text) for reply in group])
        best = best_first(rewards)[0]
        outcome.output, outcome.answer = group[best].text, task.answer(group[best].text)
        outcome.trace.append({"step": "rewards", "text": rewards})
        outcomes.append(outcome)
    return outcomes


Strategy = Callable[[LM, Task, list[dict], PromptingOptions, int], list[Outcome]]
STRATEGIES: dict[str, Strategy] = {
    "zero_shot": zero_shot,
    "rules": rules,
    "cot": cot,
    "reflection": reflection,
    "few_shot": few_shot,
    "self_consistency": self_consistency,
    "best_of_n": best_of_n,
}
