"""May this run go on from what its folder holds? Resuming must never mix two different runs.

    start = check(run_dir, cfg, stage, resume_from)   # a TunelabError naming the keys when it may not
    record(run_dir, cfg, stage, step, start)          # history.jsonl: every start and resume, with changes

A run's settings are recorded in `history.jsonl` (one line per start or resume: every key, plus a
fingerprint of the training data's contents). Going on from a checkpoint, or over a finished run, with
a setting that changes *what is trained* — the model, the adapter and its shape, the data and how it is
rendered and batched, the seed, the objective — is refused with one paragraph naming the keys and the
two ways on (`out=NEW` or `resume=never`). Settings in MAY_CHANGE (the learning rate and its schedule,
how long to train, how often to save, log and evaluate, the guard...) may change on resume; each
change is written to history.jsonl and the report, and config.yaml holds the settings now in force.
Anything not listed may not change: a new setting is safe by default.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tunelab.errors import TunelabError

HISTORY = "history.jsonl"
MAY_CHANGE = (
    "out",
    "resume",
    "distributed",
    "deepspeed",
    "merge",
    "train.lr",
    "train.epochs",
    "train.max_steps",
    "train.weight_decay",
    "train.warmup",
    "train.schedule",
    "train.max_grad_norm",
    "train.save_every",
    "train.keep_last",
    "train.keep_optimizer",
    "train.eval_every",
    "train.log_every",
    "train.guard",
    "train.early_stop",
    "train.precision",
    "train.activation_checkpointing",  # recomputes what it would have kept: the same numbers
    "data.eval",
    "reward_eval",
    "alerts",
    "kl.beta",
    "dpo.beta",
    "rl.samples_per_step",
    "rollout.backend",
    "rollout.vllm_memory",
    "model.dropout",
    "lora.dropout",
)
# written into config.yaml beside the settings, derived from them and the machine
DERIVED = ("total_steps", "global_batch", "processes", "distributed_mode", "precision", "precision_why")
CONTENTS = "data.train (contents)"
# rows per global micro-batch: what the data position counts in, so it may not change; how it is
# shared out between processes may (resuming on another number of processes is supported)
MICRO = "train.batch_size x processes"


@dataclass
class Start:
    settings: dict
    changes: dict = field(default_factory=dict)  # key -> [before, now], the allowed ones
    finished: bool = False  # the folder holds a finished run with compatible settings


def settings(cfg, stage: str, world: int = 1) -> dict:
    """Every setting as a flat `{dotted.key: value}`, the stage, and the training data's fingerprint."""
    flat = _flatten(cfg.model_dump(mode="json"))
    flat["stage"] = stage
    flat[MICRO] = flat.pop("train.batch_size") * world
    train = getattr(getattr(cfg, "data", None), "train", None)
    if train:
        flat[CONTENTS] = fingerprint(Path(train))
    return flat


def fingerprint(path: Path) -> str | None:
    """Size and checksum of the first and last MiB of a file (every file, for a folder): cheap on a
    corpus of gigabytes, and it changes when a file is swapped for another or edited."""
    if not path.exists():
        return None  # a hub dataset name: the name is the identity
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        try:
            size = f.stat().st_size
            with open(f, "rb") as handle:
                head = handle.read(1 << 20)
                handle.seek(max(0, size - (1 << 20)))
                tail = handle.read(1 << 20)
        except OSError:
            return None  # unreadable here: the reader says why, with the file's name
        digest.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{size}:".encode() + head + tail)
    return f"{len(files)} file(s), sha256 {digest.hexdigest()[:16]}"


def recorded(run_dir: Path) -> dict | None:
    """The settings the run in `run_dir` last ran with: history.jsonl, else config.yaml (older runs)."""
    history = run_dir / HISTORY
    if history.is_file():
        lines = [line for line in history.read_text(errors="replace").splitlines() if line.strip()]
        for line in reversed(lines):
            try:
                return json.loads(line)["settings"]
            except (ValueError, KeyError, TypeError):
                continue  # a half line from a kill mid-write
    config = run_dir / "config.yaml"
    if config.is_file():
        try:
            data = yaml.safe_load(config.read_text(errors="replace"))
        except yaml.YAMLError:
            return None
        if isinstance(data, dict):
            flat = _flatten(data)
            if isinstance(flat.get("train.batch_size"), int):
                flat[MICRO] = flat.pop("train.batch_size") * int(flat.get("processes") or 1)
            return {k: v for k, v in flat.items() if k not in DERIVED}
    return None


def check(run_dir: Path, cfg, stage: str, resume_from: Path | None, world: int = 1) -> Start:
    """Compare the settings with those recorded for the run this one would go on from (`world`: the
    number of processes now)."""
    now = settings(cfg, stage, world)
    home = run_dir if resume_from is None else _run_of(resume_from) or run_dir
    before = recorded(home) if cfg.resume != "never" else None
    finished = resume_from is None and _finished(run_dir) and cfg.resume == "auto"
    if before is None or (resume_from is None and not finished):
        return Start(now)  # a fresh start: nothing recorded, or nothing that going on would keep
    fixed, changes = {}, {}
    for key in sorted(set(before) | set(now)):
        if key in DERIVED or key not in before or key not in now or before[key] == now[key]:
            continue  # a key added since the run was recorded has no old value to compare
        (changes if _may_change(key) else fixed)[key] = [before[key], now[key]]
    if fixed:
        what = "; ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, (a, b) in fixed.items())
        where = f"{home} holds a {'finished ' if _finished(home) else ''}run trained with other settings"
        raise TunelabError(
            f"{where} ({what}). Going on from it would mix two different runs in one folder and one "
            f"report. Either train in a new folder (out=NEW), or start this one again from the beginning, "
            f"replacing what it holds (resume=never)."
        )
    return Start(now, changes, finished or _finished(run_dir))


def record(run_dir: Path, step: int, start: Start) -> None:
    """Append this start (step 0: the history begins again) or resume to history.jsonl."""
    entry = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "event": "resume" if step else "start",
        "step": step,
        "changed": start.changes,
        "settings": start.settings,
    }
    from tunelab.train.checkpoint import writing

    with (
        writing(f"the run history {run_dir / HISTORY}", run_dir),
        open(run_dir / HISTORY, "a" if step else "w") as f,
    ):
        f.write(json.dumps(entry) + "\n")


def announce(start: Start, say) -> None:
    if start.changes:
        say(f"changed on resume (recorded in history.jsonl): {changes_text(start)}")


def changes_text(start: Start) -> str:
    return ", ".join(f"{k} {_short(a)} -> {_short(b)}" for k, (a, b) in start.changes.items())


def history_lines(run_dir: Path) -> list[str]:
    """'step N: key a -> b, ...' for every resume that changed settings (for report.md)."""
    out = []
    path = run_dir / HISTORY
    for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("changed"):
            out.append(f"step {entry['step']}: {changes_text(Start({}, entry['changed']))}")
    return out


def _finished(run_dir: Path) -> bool:
    """A run that ended and counted as a success (summary.json without a failure)."""
    try:
        return not json.loads((run_dir / "summary.json").read_text()).get("failed")
    except (OSError, ValueError, AttributeError):
        return False


def nothing_to_do(run_dir: Path) -> str:
    return (
        f"{run_dir} holds a finished run with these settings; nothing was trained and nothing rewritten. "
        "To train again: out=NEW (a new folder) or resume=never (replace it); to train longer, raise "
        "train.max_steps or train.epochs."
    )


def _run_of(checkpoint: Path) -> Path | None:
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == "checkpoints" else None


def _may_change(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in MAY_CHANGE)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."
