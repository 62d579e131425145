"""Reward sources: plain callables `(example, completion) -> float`, combined with weights.

    reward = build_reward(["exact", {"name": "length", "weight": 0.1}, "rm:runs/rm/final"])
    reward(example, completion)            # one float; reward.parts(...) gives each source's value

Names: exact | number | regex:PATTERN | length | rm:PATH | task:TASK | reasoning_gym:TASK | module:function.
`example` is a prompts row: {"prompt": ..., "answer" or "reference": ...}.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

from tunelab.errors import TunelabError
from tunelab.tasks.metrics import after_marker as extract_answer
from tunelab.tasks.metrics import numeric

RewardFn = Callable[[dict, str], float]


def _reference(example: dict) -> str:
    ref = example.get("answer", example.get("reference"))
    if ref is None:
        raise TunelabError(
            "This reward compares with a reference: each prompt row needs an `answer` (or `reference`)."
        )
    return str(ref)


def exact_answer(example: dict, completion: str) -> float:
    return float(extract_answer(completion).lower() == _reference(example).strip().lower())


def number_close(example: dict, completion: str, tolerance: float = 1e-6) -> float:
    """1 when the last number in the completion is within `tolerance` of the reference number."""
    return numeric(completion, _reference(example), tolerance)


def regex_reward(pattern: str) -> RewardFn:
    try:
        compiled = re.compile(pattern, re.DOTALL)
    except re.error as exc:
        raise TunelabError(f"reward 'regex:{pattern}': not a regular expression ({exc}).") from None

    def matches(example: dict, completion: str) -> float:
        return float(bool(compiled.search(completion)))

    return matches


def length_penalty(example: dict, completion: str, target: int = 200) -> float:
    """0 up to `target` characters, then -1 per `target` characters beyond (a leash on rambling)."""
    return -max(0, len(completion) - target) / target


def _rm_reward(path: str) -> RewardFn:
    from tunelab.models.scorer import RewardScorer

    scorer = RewardScorer(path)

    def reward_model(example: dict, completion: str) -> float:
        return scorer.score([(example["prompt"], completion)])[0]

    reward_model.scorer = scorer  # type: ignore[attr-defined]  (the quality gate scores with it)
    reward_model.batch = lambda examples, completions: scorer.score(  # type: ignore[attr-defined]
        [(e["prompt"], c) for e, c in zip(examples, completions, strict=True)]
    )
    return reward_model


def _gym_reward(task: str) -> RewardFn:
    try:
        import reasoning_gym
    except ImportError:
        raise TunelabError(
            "reward=reasoning_gym:... needs the optional extra: pip install 'tunelab[gym]'."
        ) from None
    try:
        dataset = reasoning_gym.create_dataset(task, size=1, seed=0)
    except (ValueError, KeyError, TypeError) as exc:  # an unknown task name
        raise TunelabError(f"reward 'reasoning_gym:{task}': {exc}.") from None

    def gym(example: dict, completion: str) -> float:
        entry = example.get("entry") or {
            "answer": _reference(example),
            "metadata": example.get("metadata", {}),
        }
        return float(dataset.score_answer(answer=extract_answer(completion), entry=entry))

    return gym


def _task_reward(ref: str) -> RewardFn:
    """The task's main metric on the answer extracted from the completion (a task file or built-in name)."""
    from tunelab.tasks.task import load_task

    task = load_task(ref)

    def task_metric(example: dict, completion: str) -> float:
        row = {**example, "answer": _reference(example)}
        return task.score(task.answer(completion), row)[task.metric]

    return task_metric


def _module_reward(spec: str) -> RewardFn:
    module, _, name = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: my_rewards.py in the current folder imports
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise TunelabError(f"reward '{spec}': cannot import {name} from {module} ({exc}).") from None
    except SyntaxError as exc:  # the user's file: say where, as Python would, without the traceback
        raise TunelabError(
            f"reward '{spec}': {exc.filename}:{exc.lineno}: {exc.msg} (a syntax error in the reward module)."
        ) from None
    except Exception as exc:  # the module failed while it was being imported  # noqa: BLE001
        raise TunelabError(
            f"reward '{spec}': importing {module} raised {type(exc).__name__}: {exc}."
        ) from None
    if not callable(fn):
        raise TunelabError(f"reward '{spec}' is not callable.")
    return fn


SIMPLE = {"exact": exact_answer, "number": number_close, "length": length_penalty}


def reward_source(name: str) -> RewardFn:
    """One reward callable from its name (see the module docstring)."""
    if name in SIMPLE:
        return SIMPLE[name]
    kind, sep, arg = name.partition(":")
    if sep and kind == "regex":
        return regex_reward(arg)
    if sep and kind == "rm":
        return _rm_reward(arg)
    if sep and kind == "task":
        return _task_reward(arg)
    if sep and kind == "reasoning_gym":
        return _gym_reward(arg)
    if sep and arg:
        return _module_reward(name)
    raise TunelabError(
        f"Unknown reward '{name}'. Use one of: {', '.join(SIMPLE)}, regex:PATTERN, rm:PATH, task:TASK, "
        "reasoning_gym:TASK, or module:function."
    )


@dataclass
class Combined:
    """Weighted sum of reward sources; a source that raises or returns NaN or inf is an error naming it."""

    sources: list[tuple[str, float, RewardFn]]

    def parts(self, examples: list[dict], completions: list[str]) -> dict[str, list[float]]:
        out = {}
        for name, _, fn in self.sources:
            batch = getattr(fn, "batch", None)
            try:
                values = (
                    batch(examples, completions)
                    if batch
                    else [float(fn(e, c)) for e, c in zip(examples, completions, strict=True)]
                )
            except TunelabError:
                raise
            except Exception as exc:  # a user's reward function failed: say which and on what
                raise TunelabError(f"reward '{name}' raised {type(exc).__name__}: {exc}") from exc
            bad = next((v for v in values if not math.isfinite(v)), None)
            if bad is not None:  # inf - inf in the advantages would make the loss NaN
                raise TunelabError(f"reward '{name}' returned {bad}; rewards must be finite numbers.")
            out[name] = values
        return out

    def total(self, parts: dict[str, list[float]]) -> list[float]:
        n = len(next(iter(parts.values())))
        return [sum(w * parts[name][i] for name, w, _ in self.sources) for i in range(n)]


def build_reward(spec) -> Combined:
    """`"exact"`, `["exact", "length"]` or `[{"name": ..., "weight": ...}, ...]` -> Combined. Anything
    else (an empty list, an entry without a name, a weight that is not a finite number) is a TunelabError."""
    items = spec if isinstance(spec, list) else [spec]
    if not items:
        raise TunelabError("reward=[]: name at least one reward (e.g. reward=exact).")
    sources = []
    for i, item in enumerate(items):
        name, weight = _entry(item, f"reward[{i}]" if isinstance(spec, list) else "reward")
        sources.append((name, weight, reward_source(name)))
    return Combined(sources)


def _entry(item, where: str) -> tuple[str, float]:
    """(name, weight) of one reward entry: a name, or {name, weight}."""
    if isinstance(item, str) and item:
        return item, 1.0
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or set(item) - {"name", "weight"}:
        raise TunelabError(
            f"{where}: expected a reward name or {{name: ..., weight: ...}}, got {str(item)[:60]!r}."
        )
    weight = item.get("weight", 1.0)
    try:
        ok = not isinstance(weight, bool) and math.isfinite(float(weight))
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise TunelabError(f"{where}: weight must be a finite number, got {str(weight)[:40]!r}.")
    return item["name"], float(weight)
