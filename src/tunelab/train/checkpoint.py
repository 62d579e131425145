"""Checkpoints that resume exactly, written so that a kill at any moment never leaves a half one behind.

    checkpoints/step-N/
      trainable.safetensors   # every parameter that trains (the adapter, or the whole model)
      optimizer.pt            # AdamW moments
      state.json              # step, data position, lr scale, guard, early-stopping state
      rng.pt                  # torch, python and numpy RNG states

Each is written into `step-N.tmp/` and renamed to `step-N/` only when complete; `latest()` never
looks at `.tmp` folders.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STEP_DIR = re.compile(r"^step-(\d+)$")


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().contiguous().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [name for name in tensors if name not in params]
    if missing:
        raise RuntimeError(f"checkpoint holds parameters the model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save(folder: Path, model, optimizer, state: dict) -> Path:
    """Write checkpoint `folder` atomically (temporary folder, then rename)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), tmp / "trainable.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    for f in tmp.iterdir():  # data on disk before the rename makes the folder visible
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def load(folder: Path, model, optimizer) -> dict:
    """Restore weights, optimizer and RNG; return the loop state."""
    load_trainable(model, load_file(folder / "trainable.safetensors"))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))
    set_rng_state(torch.load(folder / "rng.pt", weights_only=False))
    return json.loads((folder / "state.json").read_text())


def all_steps(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return sorted(found)


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint under `root` (half-written `.tmp` folders are ignored)."""
    steps = [p for _, p in all_steps(root) if (p / "state.json").is_file()]
    return steps[-1] if steps else None


def prune(root: Path, keep: int) -> None:
    for _, path in all_steps(root)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for stale in root.glob("*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
