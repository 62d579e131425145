"""Checkpoints that resume exactly, written so that a kill at any moment never leaves a half one behind.

    checkpoints/step-N/
      trainable.safetensors   # every parameter that trains (the adapter, or the whole model)
      optimizer.pt            # AdamW moments
      sharded/                # instead of the two above under FSDP: torch.distributed.checkpoint files,
                              #   one per rank, loadable onto another number of processes
      deepspeed/              # instead, under DeepSpeed: accelerate's save_state (the engine's own files)
      state.json              # step, data position, lr scale, guard, early-stopping state
      rng.pt, rng-R.pt        # torch, python and numpy RNG states of rank 0, of rank R
      source.pt, source-R.pt  # the batch source's own state, when it has one (RL: alert baseline, buffer)
      manifest.json           # written last, atomically: every other file's size and SHA-256

Each is written into `step-N.tmp/` and renamed to `step-N/` only when complete; `latest()` never
looks at `.tmp` folders. A checkpoint proves itself: `verify()` checks every file against the
manifest, `latest()` is the newest one that verifies, and `resume_point()` falls back past damaged
ones, saying which and why, or stops with a message when none is intact. Under several processes every rank writes its part into the same folder (a
file system they share), and rank 0 renames it once all have finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tunelab.errors import TunelabError
from tunelab.train.dist import SINGLE, Dist

STEP_DIR = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"


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


def _rng_file(rank: int) -> str:
    return "rng.pt" if rank == 0 else f"rng-{rank}.pt"


def save(
    folder: Path, model, optimizer, state: dict, dist: Dist = SINGLE, extra: dict[str, object] | None = None
) -> Path:
    """Write checkpoint `folder` atomically (temporary folder, then rename). Every rank calls it;
    `extra` maps file names to objects this rank writes with torch.save. A write that fails (a full
    disk) removes the half-written folder, giving its space back, and raises one of WRITE_ERRORS."""
    tmp = folder.with_name(folder.name + ".tmp")
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    try:
        _write_parts(tmp, model, optimizer, state, dist, extra or {})
    except WRITE_ERRORS:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dist.is_main:
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    dist.barrier()
    return folder


# what a failed write raises (a full disk, a file-size limit): OSError from Python's own writes,
# RuntimeError from torch.save ("unexpected pos ..."), SafetensorError from safetensors
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


def _write_parts(tmp: Path, model, optimizer, state: dict, dist: Dist, extra: dict[str, object]) -> None:
    if dist.sharded:
        import torch.distributed.checkpoint as dcp

        dcp.save(_sharded_state(model, optimizer), checkpoint_id=str(tmp / "sharded"))
    elif dist.mode == "deepspeed":  # the engine writes its own partitioned states
        dist.accelerator.save_state(str(tmp / "deepspeed"))
    elif dist.is_main:
        save_file(trainable_state(model), tmp / "trainable.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / _rng_file(dist.rank))
    for name, obj in extra.items():
        torch.save(obj, tmp / name)
    dist.barrier()
    if dist.is_main:
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        for f in tmp.rglob("*"):  # data on disk before the rename makes the folder visible
            if f.is_file():
                with open(f, "rb") as handle:
                    os.fsync(handle.fileno())
        _write_manifest(tmp)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(folder: Path) -> None:
    """Sizes and checksums of every file, written last and atomically (a temporary name, then a rename)."""
    files = {
        str(f.relative_to(folder)): {"bytes": f.stat().st_size, "sha256": _sha256(f)}
        for f in sorted(folder.rglob("*"))
        if f.is_file() and not f.name.startswith(MANIFEST)
    }
    part = folder / (MANIFEST + ".part")
    with open(part, "w") as f:
        f.write(json.dumps({"format": 1, "files": files}, indent=1))
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, folder / MANIFEST)


def verify(folder: Path) -> str | None:
    """What is wrong with checkpoint `folder` (a missing, truncated or altered file), or None when every
    file matches its manifest."""
    try:
        listed = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"it has no {MANIFEST} (its write never finished, or an older tunelab wrote it)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {MANIFEST} is damaged"
    for name, want in listed.items():
        f = folder / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != want["bytes"]:
            return (
                f"{name} has {size:,} bytes where {want['bytes']:,} were written (truncated or overwritten)"
            )
        if _sha256(f) != want["sha256"]:
            return f"{name} does not match its checksum (its bytes changed after it was written)"
    return None


def drop_optimizer_state(root: Path) -> int:
    """After a run has finished: each checkpoint's optimizer state goes (AdamW's two moments, twice the
    trainable weights: most of a full fine-tuning checkpoint), and its manifest says so. Returns the bytes
    freed. Sharded and DeepSpeed checkpoints keep theirs (there the optimizer is interleaved with the
    weights). A run resumed from such a checkpoint to train further starts its moments from zero."""
    freed = 0
    for _, folder in all_steps(root):
        optim = folder / "optimizer.pt"
        if not optim.is_file():
            continue
        freed += optim.stat().st_size
        optim.unlink()
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            continue
        manifest["files"].pop("optimizer.pt", None)
        manifest["dropped"] = {"optimizer.pt": "the run finished (train.keep_optimizer=false)"}
        part = folder / (MANIFEST + ".part")
        part.write_text(json.dumps(manifest, indent=1))
        os.replace(part, folder / MANIFEST)
    return freed


def newest_intact(root: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint under `root` that verifies, and why each newer one was passed over."""
    passed: list[str] = []
    for _, folder in reversed(all_steps(root)):
        problem = verify(folder)
        if problem is None:
            return folder, passed
        passed.append(f"{folder.name}: {problem}")
    return None, passed


def resume_point(resume: str, root: Path, say: Callable[[str], None]) -> Path | None:
    """The checkpoint `resume` (auto | never | PATH) asks for, verified. `auto` takes the newest intact
    one under `root` and says which damaged ones it passed over; a TunelabError when none is intact, or
    when the named PATH is damaged."""
    if resume == "never":
        return None
    if resume == "auto":
        found, passed = newest_intact(root)
        for why in passed:
            say(f"checkpoint {why}; " + (f"resuming from {found.name} instead" if found else "passed over"))
        if found is None and passed:
            raise TunelabError(
                f"No intact checkpoint in {root} to resume from: " + "; ".join(passed) + ". Start the run "
                "again from the beginning with resume=never, or in a new folder with out=NEW."
            )
        return found
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise TunelabError(f"resume={resume}: not a complete checkpoint folder (no state.json).")
    problem = verify(path)
    if problem is not None and (path / MANIFEST).exists():
        other, _ = newest_intact(path.parent)
        hint = f" The newest intact checkpoint there is {other}." if other else ""
        raise TunelabError(f"resume={resume}: cannot resume from it: {problem}.{hint}")
    if problem is not None:  # named by hand and written before manifests existed: trusted, with a word
        say(f"resume={resume}: {problem}; resuming from it unverified, as asked")
    return path


def load_weights(folder: Path, model, optimizer, dist: Dist = SINGLE) -> None:
    """Trainable weights and optimizer state, in whichever format the checkpoint was written."""
    if (folder / "sharded").is_dir():
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = _sharded_state(model, optimizer)
        dcp.load(state, checkpoint_id=str(folder / "sharded"))
        set_state_dict(
            model,
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
            options=_state_options(),
        )
        return
    if (folder / "deepspeed").is_dir():
        dist.accelerator.load_state(str(folder / "deepspeed"))
        return
    if dist.sharded and dist.world > 1:
        raise TunelabError(
            f"{folder} was written without FSDP; resume it with the distributed mode it was written with."
        )
    load_trainable(model, load_file(folder / "trainable.safetensors"))
    if not (folder / "optimizer.pt").is_file() and _dropped(folder, "optimizer.pt"):
        return  # the run finished and let its optimizer state go: the moments start again from zero
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))


def _dropped(folder: Path, name: str) -> bool:
    try:
        return name in json.loads((folder / MANIFEST).read_text()).get("dropped", {})
    except (OSError, ValueError, AttributeError):
        return False


def load(folder: Path, model, optimizer, dist: Dist = SINGLE) -> dict:
    """Restore weights, optimizer and this rank's RNG; return the loop state. A checkpoint that does not
    fit the model (another adapter, another shape) or cannot be read is a TunelabError."""
    try:
        load_weights(folder, model, optimizer, dist)
        rng = folder / _rng_file(dist.rank)
        set_rng_state(torch.load(rng if rng.is_file() else folder / "rng.pt", weights_only=False))
        return json.loads((folder / "state.json").read_text())
    except TunelabError:
        raise
    except (*WRITE_ERRORS, KeyError, ValueError, EOFError, TypeError) as exc:
        raise TunelabError(
            f"Cannot resume from {folder}: {str(exc).splitlines()[0][:300]}. It does not fit this model and "
            "settings; train in a new folder with out=NEW, or start again with resume=never."
        ) from None


def _state_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True)  # only what trains: the adapter, or everything


def _sharded_state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer, options=_state_options())
    return {"model": model_state, "optim": optim_state}


def all_steps(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return sorted(found)


def latest(root: Path) -> Path | None:
    """The newest checkpoint under `root` that verifies against its manifest (`.tmp` folders are ignored)."""
    return newest_intact(root)[0]


def prune(root: Path, keep: int) -> None:
    for _, path in all_steps(root)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for stale in root.glob("*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@contextmanager
def writing(what: str, run_dir: Path):
    """A write that fails (mostly a full disk) is for the user to fix: say what failed and how to go on."""
    try:
        yield
    except WRITE_ERRORS as exc:
        free = shutil.disk_usage(run_dir).free / 2**30
        raise TunelabError(  # torch's own message ("unexpected pos ...") does not say it was a write
            f"could not write {what} ({free:.1f} GB free there; a full disk is the usual cause): {exc}. "
            + how_to_go_on(run_dir, "free some space")
        ) from None


def how_to_go_on(run_dir: Path, fix: str) -> str:
    newest = latest(run_dir / "checkpoints")
    where = f"The newest complete checkpoint is {newest}" if newest else "No checkpoint is complete yet"
    return f"{where}; {fix} and run the same command again with out={run_dir} resume=auto."
