"""The task record and how its metrics become scorers; no file reading here (tasks/task.py reads files).

Task(name="sums", train=rows, eval=rows, extract="number", metrics=["numeric"])
"""

from __future__ import annotations

import importlib
import string
from collections.abc import Callable
from dataclasses import dataclass, field

from tunelab.errors import TunelabError
from tunelab.tasks.metrics import METRICS, extractor

Scorer = Callable[[str, dict], float]  # (prediction, example row) -> value in [0, 1]


@dataclass
class Task:
    name: str
    train: list[dict]  # the few-shot pool; each row has "answer" (the reference) and its own fields
    eval: list[dict]
    template: str = "{prompt}"
    rules: list[str] = field(default_factory=list)
    system: str | None = None
    extract: str = "strip"
    metrics: list[str] = field(default_factory=lambda: ["exact"])
    tolerance: float = 1e-6
    max_new_tokens: int = 64
    scorers: dict[str, Scorer] = field(default_factory=dict)  # built from `metrics` unless given

    def __post_init__(self) -> None:
        try:
            self._extract = extractor(self.extract)
        except KeyError:
            raise TunelabError(
                f"task {self.name}: unknown extract '{self.extract}'. Use strip, first_line, last_line, json, "
                "number, choice, answer or regex:PATTERN."
            ) from None
        for metric in self.metrics:
            if metric not in self.scorers:
                self.scorers[metric] = _scorer(metric, self.tolerance, self.name)
        template_fields(self.template, self.name)

    @property
    def metric(self) -> str:
        return self.metrics[0]

    def prompt(self, row: dict) -> str:
        return self.template.format_map(row)

    def reference(self, row: dict) -> str:
        return row["answer"]

    def answer(self, output: str) -> str:
        """The answer the metric sees, taken from the model's whole output."""
        return self._extract(output)

    def score(self, prediction: str, row: dict) -> dict[str, float]:
        return {name: float(fn(prediction, row)) for name, fn in self.scorers.items()}


def _scorer(metric: str, tolerance: float, task: str) -> Scorer:
    if metric == "numeric":
        return lambda pred, row: METRICS["numeric"](pred, row["answer"], tolerance)
    if metric in METRICS:
        fn = METRICS[metric]
        return lambda pred, row: fn(pred, row["answer"])
    module, sep, name = metric.partition(":")
    if sep:
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise TunelabError(
                f"task {task}: metric '{metric}': cannot import {name} from {module} ({exc})."
            ) from None
        return fn
    raise TunelabError(
        f"task {task}: unknown metric '{metric}'. Use {', '.join(METRICS)} or module:function."
    )


def template_fields(template: str, task: str = "") -> list[str]:
    """The row fields a template uses; a malformed template is an error that says how to write braces."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TunelabError(
            f"task {task}: field 'template' is not a valid template ({exc}). Row fields are written "
            "{field}; literal braces (e.g. in JSON) are doubled: {{ and }}."
        ) from None
    names = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        base = name.split(".")[0].split("[")[0]
        if not base.isidentifier():
            raise TunelabError(
                f"task {task}: field 'template' has '{{{name}}}', which is not a row field. Row fields are "
                "written {field}; literal braces (e.g. in JSON) are doubled: {{ and }}."
            )
        names.append(base)
    return names
