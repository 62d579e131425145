"""The Python API: every command of the CLI as a function with the same keys, returning a `Run`.

    import tunelab
    run = tunelab.sft(model="smollm2-135m", adapter="lora", data={"train": rows}, train={"max_steps": 20})
    run = tunelab.sft(**{"train.lr": 1e-4}, data={"train": "pairs.jsonl"})    # dotted keys work too
    run.metrics[-1]["loss"]; run.final; run.generate("Extract ...")
    model, tok = run.load()
    rl = tunelab.rl(model=run.final, data={"train": prompts}, reward=[my_fn, {"name": "length", "weight": 0.1}])

Keys go through the same validation as `tunelab STAGE key=value ...`: a bad key or value raises
`TunelabError` with the CLI's one-paragraph message (and never exits the interpreter). What is not a
config value in the CLI is accepted here and made into one:
- data (`data.train`, `data.eval`, `prompting.rm_prompts`...): a list of dicts or a `datasets.Dataset`
  is written as JSONL into the run folder (`out`, made up when not given) and its path is passed;
- a reward: a Python callable `(example, completion) -> float`, or a list of them (and names, and
  `{"name": fn, "weight": w}`), registered under a `module:function` name for this process;
- a task (`eval`, `ladder`): a `Task` object, written as a task YAML + JSONL into the run folder.
Callables live in this process only: `distributed=ddp|fsdp` children cannot see them.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

CALLABLES = "tunelab.api"  # module whose attributes hold the callables handed over as module:function
_registered: dict[int, str] = {}


# ---------------------------------------------------------------- the result


@dataclass
class Run:
    """What a stage left behind: its folder, resolved config, metrics and final model."""

    stage: str
    folder: Path
    config: dict = field(repr=False)
    _loaded: tuple | None = field(default=None, repr=False)

    @property
    def metrics(self) -> list[dict]:
        """metrics.jsonl as a list of dicts (one per logged step); eval / ladder: their results rows."""
        path = self.folder / "metrics.jsonl"
        if path.is_file():
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        results = self.results
        return list(results.get("results") or results.get("rungs") or [])

    @property
    def results(self) -> dict:
        """summary.json (training stages) or results.json (eval, ladder)."""
        for name in ("summary.json", "results.json"):
            if (self.folder / name).is_file():
                return json.loads((self.folder / name).read_text())
        return {}

    @property
    def final(self) -> Path | None:
        """The final model (an HF folder or a PEFT adapter folder); None for eval and ladder."""
        final = self.folder / "final"
        return final if final.is_dir() else None

    def load(self):
        """(model, tokenizer) of the final model, loaded once (a reward model gets its scalar head)."""
        if self._loaded is None:
            from tunelab.models.load import load_model

            if self.final is None:
                raise TunelabError(f"{self.stage} run {self.folder} has no final model to load.")
            head = "reward" if self.stage == "rm" else "lm"
            self._loaded = load_model(str(self.final), head=head)
        return self._loaded

    def generate(self, prompt: str | list[str], **options) -> str | list[str]:
        """Answers rendered as in training (greedy unless temperature= is given); `max_new_tokens=` etc."""
        from tunelab.generation import generate
        from tunelab.rm import render_options_for

        if self.stage == "rm":
            raise TunelabError(
                "A reward model scores answers, it does not write them: use tunelab.rm.RewardScorer."
            )
        model, tok = self.load()
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        opts = render_options_for(str(self.final))
        answers = generate(model, tok, prompts, opts=opts, **{"max_new_tokens": 64, **options})
        return answers[0] if isinstance(prompt, str) else answers


# ---------------------------------------------------------------- keys -> the CLI's overrides


def _tree(config: dict | None, keys: dict[str, Any]) -> dict:
    """Nested dicts and dotted names into one tree: {"train.lr": 1} + {"train": {"steps": 2}}."""
    tree: dict = {}

    def put(path: list[str], value) -> None:
        node = tree
        for part in path[:-1]:
            if isinstance(node.get(part), str):
                node[part] = {"name": node[part]}  # `model="x"` then `model.dtype=...`
            node = node.setdefault(part, {})
        if isinstance(value, dict) and isinstance(node.get(path[-1]), dict):
            for k, v in value.items():
                put([*path, *k.split(".")], v)
        else:
            node[path[-1]] = value

    for source in (config or {}, keys):
        for key, value in source.items():
            if isinstance(value, dict):
                for k, v in value.items():
                    put([*key.split("."), *k.split(".")], v)
            else:
                put(key.split("."), value)
    return tree


def _yaml_value(value) -> str:
    """A value as the CLI would read it after `key=` (a YAML scalar or flow list)."""
    import yaml

    if isinstance(value, float):  # YAML 1.1 reads 1e-05 as a string; 1.0e-05 is a float
        text = repr(value)
        return text if "." in text or "e" not in text else text.replace("e", ".0e", 1)
    if isinstance(value, (Path, Run)):
        value = str(value.folder / "final" if isinstance(value, Run) and value.final else value)
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).strip().removesuffix("...").strip()


def _flatten(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={_yaml_value(value)}")
    return out


# ---------------------------------------------------------------- Python objects -> paths and names


def _is_rows(value) -> bool:
    if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
        return True
    return type(value).__name__ in ("Dataset", "IterableDataset") and hasattr(value, "features")


def _write_rows(rows, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(dict(row), ensure_ascii=False, default=str) + "\n")
    return str(path)


def _data_to_files(tree: dict, folder: Path, where: str = "") -> None:
    """Every list of dicts / Dataset anywhere in the keys becomes a JSONL in folder/data/."""
    for key, value in list(tree.items()):
        name = f"{where}{key}"
        if name == "reward":  # a list of {name, weight} is a reward spec, not rows
            continue
        if isinstance(value, dict):
            _data_to_files(value, folder, f"{name}.")
        elif _is_rows(value):
            tree[key] = _write_rows(value, folder / "data" / f"{name.replace('.', '_')}.jsonl")


def register(fn: Callable) -> str:
    """A callable under a `module:function` name this process resolves (rewards, task metrics)."""
    if id(fn) not in _registered:
        name = f"fn{len(_registered)}_{getattr(fn, '__name__', 'callable').strip('<>')}"
        name = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
        setattr(importlib.import_module(CALLABLES), name, fn)
        _registered[id(fn)] = name
    return f"{CALLABLES}:{_registered[id(fn)]}"


def _reward_spec(value):
    if callable(value):
        return register(value)
    if isinstance(value, dict):
        return {k: (_reward_spec(v) if k == "name" else v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_reward_spec(v) for v in value]
    return value


def _task_to_file(task, folder: Path) -> str:
    """A Task object as a task YAML (+ its rows as JSONL) that `task=` reads back, scorers included."""
    import yaml

    here = folder / "task"
    metrics = [
        m if m not in task.scorers or _builtin_metric(m) else register(task.scorers[m]) for m in task.metrics
    ]
    spec = {
        "name": task.name,
        "template": task.template,
        "rules": list(task.rules),
        "system": task.system,
        "extract": task.extract,
        "metrics": metrics,
        "tolerance": task.tolerance,
        "max_new_tokens": task.max_new_tokens,
        "answer_field": "answer",
        "data": {"eval": _write_rows(task.eval, here / "eval.jsonl")},
    }
    if task.train:
        spec["data"]["train"] = _write_rows(task.train, here / "train.jsonl")
    path = here / "task.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return str(path)


def _builtin_metric(name: str) -> bool:
    from tunelab.tasks.metrics import METRICS

    return name in METRICS or ":" in name


# ---------------------------------------------------------------- running a stage


def _schema_module():
    """The module of the stage config classes, the one the CLI's STAGES table names them in."""
    try:
        return importlib.import_module("tunelab.config.schema")  # after config/ became a package
    except ImportError:
        return importlib.import_module("tunelab.schema")


def _config(stage: str, config: str | Path | dict | None, keys: dict):
    """The stage's validated config, exactly as `tunelab STAGE [CONFIG.yaml] key=value ...` builds it."""
    from tunelab.config import load_config

    path = None
    if isinstance(config, (str, Path)):
        path, config = str(config), None
    tree = _tree(config, keys)
    out = Path(tree.get("out") or Path("runs") / f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}")
    tree["out"] = str(out)
    _data_to_files(tree, out)
    if "reward" in tree:
        tree["reward"] = _reward_spec(tree["reward"])
    task = tree.get("task")
    if task is not None and not isinstance(task, (str, Path)):
        tree["task"] = _task_to_file(task, out)
    if stage == "ladder":  # the task file's own `ladder:` block applies, as on the command line
        from tunelab.commands.ladder import ladder_config

        return ladder_config(tree.pop("task", None), _flatten(tree))
    schema = _schema_module()
    from tunelab.cli import STAGES

    return load_config(getattr(schema, STAGES[stage][0]), path, _flatten(tree))


def run_stage(stage: str, config: str | Path | dict | None = None, **keys) -> Run:
    """Validate the keys as the CLI does, run the stage in this process, return its Run."""
    from tunelab.cli import STAGES, _offline_defaults

    _offline_defaults()
    cfg = _config(stage, config, keys)
    from tunelab.commands import quiet_hf

    quiet_hf()
    module = "tunelab.ladder.run" if stage == "ladder" else STAGES[stage][1]
    from tunelab.stages.names import check_names

    check_names(cfg)  # as the command line does: every variant name, before any data is read
    folder = Path(importlib.import_module(module).main(cfg))
    return Run(stage=stage, folder=folder, config=cfg.model_dump(mode="json"))


def sft(config=None, **keys) -> Run:
    """`tunelab sft`: supervised fine-tuning (keys as in configs/sft.yaml)."""
    return run_stage("sft", config, **keys)


def pretrain(config=None, **keys) -> Run:
    """`tunelab pretrain`: next-token training on raw text (data rows need `text`)."""
    return run_stage("pretrain", config, **keys)


def rm(config=None, **keys) -> Run:
    """`tunelab rm`: a reward model from preference pairs (prompt, chosen, rejected)."""
    return run_stage("rm", config, **keys)


def dpo(config=None, **keys) -> Run:
    """`tunelab dpo`: offline preference optimisation."""
    return run_stage("dpo", config, **keys)


def rl(config=None, **keys) -> Run:
    """`tunelab rl`: RL from a reward; `reward` may be a callable (example, completion) -> float."""
    return run_stage("rl", config, **keys)


def eval(config=None, **keys) -> Run:  # the command's name, though it hides the builtin here
    """`tunelab eval`: a model on a task with prompting strategies; `task` may be a Task object."""
    return run_stage("eval", config, **keys)


def ladder(task=None, **keys) -> Run:
    """`tunelab ladder`: every rung on one task; `task` is a task YAML, a built-in name or a Task object."""
    if task is not None:
        keys["task"] = task
    return run_stage("ladder", None, **keys)


def export(model: str | Path | Run, to: str, out: str | Path, quant: str = "f16", base: bool = False) -> Path:
    """`tunelab export`: a merged HF folder or a GGUF file (+ Ollama Modelfile)."""
    from tunelab.export import main

    source = model.folder if isinstance(model, Run) else model
    return main(str(source), to, str(out), quant=quant, base=base)
