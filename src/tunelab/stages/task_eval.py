"""Stop SFT on the task's own metric: greedy answers to validation rows, scored like the ladder scores.

    tunelab sft ... task_eval.task=examples/tasks/dates.yaml task_eval.rows=val.jsonl train.eval_every=4

Every train.eval_every steps the model answers the validation rows (greedy, the task's max_new_tokens),
the task extracts and scores each answer, and the mean is logged as `eval_task`; early stopping watches
it (mode max, task_eval.patience), so the best checkpoint becomes final/. The rows are the task's own
rows (its fields and `answer`), rendered with the task's template, as in the ladder's training pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.config.schema import SFTConfig
from tunelab.errors import TunelabError


def task_evaluator(cfg: SFTConfig, tok):
    from tunelab.generation import generate
    from tunelab.stages.common import render_options
    from tunelab.tasks.task import load_task

    te = cfg.task_eval
    if not te.rows or not Path(te.rows).is_file():
        raise TunelabError(f"task_eval.rows={te.rows}: a JSONL file of validation rows is needed.")
    if not cfg.train.eval_every:
        raise TunelabError("task_eval runs at each evaluation: set train.eval_every=N.")
    task = load_task(te.task, seed=cfg.seed)
    rows = [json.loads(line) for line in Path(te.rows).read_text().splitlines() if line.strip()]
    prompts = [task.prompt(r) for r in rows]
    es = cfg.train.early_stop
    es.metric, es.mode, es.patience = "eval_task", "max", te.patience
    opts = render_options(cfg)

    def evaluate_task(model) -> dict[str, float]:
        model.eval()
        answers = generate(model, tok, prompts, max_new_tokens=task.max_new_tokens, opts=opts)
        scores = [task.score(task.answer(a), r)[task.metric] for a, r in zip(answers, rows, strict=True)]
        return {"eval_task": sum(scores) / len(scores)}

    return evaluate_task
