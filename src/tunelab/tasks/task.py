"""A task: data (a few-shot pool and an eval split), a prompt template, an answer extractor, metrics.

    task = load_task("examples/tasks/extract.yaml")     # a task file (format below)
    task = load_task("extract")                          # a built-in task (tunelab.tasks.builtin)
    task = load_task("reasoning_gym:basic_arithmetic")   # a reasoning-gym generator, its own scorer
    task.prompt(row); task.answer(model_text); task.score(answer, row)  # -> {"json": 1.0, ...}

A task file (paths are relative to the file):

    name: product-extraction
    data: {train: ../data/extraction.jsonl, eval: ../data/extraction_eval.jsonl}   # or eval_split: 0.2
    template: "{prompt}"          # any row field in braces; literal braces are written {{ }}
    rules: ["Answer with one line of JSON.", ...]      # the `rules` strategy shows them
    extract: json                 # strip | first_line | last_line | json | number | choice | answer | regex:P
    metrics: [json, rouge_l]      # exact | normalized | numeric | choice | json | rouge_l | module:function

Rows are pairs or prompts: the reference answer is the first of `answer`, `completion`, `output`,
`reference` present (or `answer_field`). Every row is checked against the template before any model runs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pydantic import Field

from tunelab.config import Section, load_config
from tunelab.errors import DataError, Problem, TunelabError
from tunelab.tasks.base import Scorer, Task, template_fields  # noqa: F401  (re-exported)

ANSWER_FIELDS = ("answer", "completion", "output", "reference")


class TaskData(Section):
    train: str | None = Field(None, description="rows for few-shot examples (and training, in the ladder)")
    eval: str | None = Field(None, description="held-out rows the metric is computed on")
    eval_split: float = Field(
        0.2, gt=0, lt=1, description="share of train held out for eval when data.eval is unset"
    )


class TaskSpec(Section):
    name: str | None = Field(None, description="task name; default: the file name")
    data: TaskData = Field(default_factory=TaskData, description="where the rows are")
    template: str = Field("{prompt}", description="prompt template; {field} is a row field")
    answer_field: str | None = Field(
        None, description="field of the reference answer; default: answer/completion/output/reference"
    )
    rules: list[str] = Field(
        default_factory=list, description="requirements the `rules` strategy writes down"
    )
    system: str | None = Field(None, description="system message for every prompt (chat models)")
    extract: str = Field("strip", description="how the answer is taken from the model's output")
    metrics: list[str] = Field(
        default_factory=lambda: ["exact"], description="metrics; the first is the main one"
    )
    tolerance: float = Field(1e-6, ge=0, le=1e9, description="absolute tolerance of the numeric metric")
    max_new_tokens: int = Field(
        64, ge=1, le=65_536, description="longest direct answer (chain of thought gets more)"
    )
    ladder: dict | None = Field(
        None,
        description="defaults for `tunelab ladder` on this task (any ladder key, e.g. rungs, lora.steps)",
    )


# ---------------------------------------------------------------- reading rows


def _reference_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def task_rows(path: str | Path, template: str, answer_field: str | None) -> list[dict]:
    """Rows of a task file, each with "answer"; every row missing a template field or the answer is reported."""
    from tunelab.data.read import records

    needed = template_fields(template)
    rows, problems = [], []
    for line, record in records(path):
        if isinstance(record, Problem):
            problems.append(record)
            continue
        if "instruction" in record and "prompt" not in record:  # alpaca rows
            extra = record.get("input")
            bad = next(
                (
                    f
                    for f in ("instruction", "input")
                    if record.get(f) is not None and not isinstance(record[f], str)
                ),
                None,
            )
            if bad or record["instruction"] is None:  # found by tests/test_fuzz.py: null crashed the join
                what = "null" if record.get(bad or "instruction") is None else type(record[bad]).__name__
                problems.append(Problem(str(path), line, bad or "instruction", f"expected text, got {what}"))
                continue
            record = {**record, "prompt": record["instruction"] + (f"\n\n{extra}" if extra else "")}
        found = [
            Problem(
                str(path), line, name, f"missing: the template uses {{{name}}}; the row has {sorted(record)}"
            )
            for name in needed
            if name not in record
        ]
        key = answer_field or next((f for f in ANSWER_FIELDS if f in record), None)
        if key is None or record.get(key) is None:
            found.append(
                Problem(
                    str(path),
                    line,
                    key or "answer",
                    "missing: the reference answer (answer, completion, output or reference)",
                )
            )
        problems += found
        if not found:
            rows.append({**record, "answer": _reference_text(record[key])})
    if problems:
        raise DataError(problems, n_ok=len(rows), hint="fix these rows, or the task's template")
    return rows


def load_task(ref: str, *, seed: int = 0, size: int = 200) -> Task:
    """A task from a YAML file, a built-in name, or `reasoning_gym:NAME` (`size` eval rows, fixed seed)."""
    if ref.startswith("reasoning_gym:"):
        return gym_task(ref.partition(":")[2], seed=seed, size=size)
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return _task_file(path, seed)
    from tunelab.tasks.builtin import BUILTIN

    if ref in BUILTIN:
        return BUILTIN[ref]()
    raise TunelabError(
        f"Unknown task '{ref}': not a task file, not reasoning_gym:NAME, not one of the built-in tasks "
        f"({', '.join(BUILTIN)})."
    )


def _task_file(path: Path, seed: int) -> Task:
    """A task file's problems name the file (a bad template or metric would otherwise name only the task)."""
    try:
        return _read_task_file(path, seed)
    except TunelabError as err:
        if str(path) not in str(err):
            err.args = (f"Task file {path}: {err}",)
        raise


def _read_task_file(path: Path, seed: int) -> Task:
    spec = load_config(TaskSpec, path)
    here = path.parent

    def rows(rel: str) -> list[dict]:
        return task_rows(here / rel, spec.template, spec.answer_field)

    if spec.data.eval is None and spec.data.train is None:
        raise TunelabError(f"Task file {path}: set data.eval (and data.train for few-shot examples).")
    train = rows(spec.data.train) if spec.data.train else []
    if spec.data.eval:
        held_out = rows(spec.data.eval)
    else:  # hold out a fixed share of train
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        cut = max(1, round(len(train) * spec.data.eval_split))
        held_out, train = [train[i] for i in order[:cut]], [train[i] for i in order[cut:]]
    return Task(
        name=spec.name or path.stem,
        train=train,
        eval=held_out,
        template=spec.template,
        rules=spec.rules,
        system=spec.system,
        extract=spec.extract,
        metrics=spec.metrics,
        tolerance=spec.tolerance,
        max_new_tokens=spec.max_new_tokens,
    )


def gym_task(name: str, *, seed: int = 0, size: int = 200) -> Task:
    """A reasoning-gym generator as a task: eval rows from `seed`, a disjoint few-shot pool from `seed + 1`."""
    try:
        import reasoning_gym
    except ImportError:
        raise TunelabError(
            "task=reasoning_gym:... needs the optional extra: pip install 'tunelab[gym]'."
        ) from None
    try:
        held_out = reasoning_gym.create_dataset(name, size=size, seed=seed)
        pool = reasoning_gym.create_dataset(name, size=min(size, 64), seed=seed + 1)
    except Exception as exc:  # reasoning-gym raises several types for an unknown name
        raise TunelabError(f"reasoning_gym:{name}: cannot create the dataset ({exc}).") from None

    def rows(dataset) -> list[dict]:
        return [{"prompt": e["question"], "answer": str(e["answer"]), "entry": e} for e in dataset]

    def gym_score(prediction: str, row: dict) -> float:
        return float(held_out.score_answer(answer=prediction, entry=row["entry"]))

    return Task(
        name=f"reasoning_gym:{name}",
        train=rows(pool),
        eval=rows(held_out),
        extract="answer",
        metrics=["gym"],
        scorers={"gym": gym_score},
        rules=["Give only the final answer, with no explanation."],
        max_new_tokens=64,
    )
