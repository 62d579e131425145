"""FSDP2 without a full copy of the model on any rank: built on the meta device, each rank reads only
its own rows of every weight from the safetensors files, and `final/` is written tensor by tensor.

    torchrun --nproc_per_node 8 -m tunelab sft cfg.yaml model=path/to/hf_dir adapter=none distributed=fsdp

Used by `prepare_model` when `distributed=fsdp` and the model is a safetensors folder (an HF folder or the embedded model) with a causal-LM head and adapter none or lora:
1. the model is built under `init_empty_weights` (parameters on the meta device; buffers such as the
   rotary frequencies are real, they are small and computed, not stored);
2. a LoRA adapter is attached to that skeleton (its layers must sit inside the FSDP units);
3. `fully_shard` on every decoder layer and the root (train/dist.shard_model), then `to_empty`: each
   rank allocates its shard only (FSDP2 shards dim 0 in `torch.chunk` pieces);
   (on one process nothing is sharded: the weights are read straight onto the device, no CPU copy);
4. every parameter's local rows are read with safetensors' `get_slice`, so a rank never materialises
   more than its share; LoRA's weights are drawn again from the RNG state the attach started from,
   in peft's order, so they equal a one-process run's bit for bit.
A resumed run loads the same way, then the checkpoint's shards overwrite what trains.
Reward heads, DoRA (its magnitudes are norms of the full base weights) and prompt tuning load the
ordinary way and are sharded after.

Writing `final/` under FSDP gathers one tensor at a time (a collective) and rank 0 writes files of at
most SHARD_BYTES in HF's sharded layout (`model.safetensors` when it fits one file, otherwise
`model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`), so rank 0 never holds the whole
model either. An adapter's trainable weights are gathered alone (they are small).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import torch

SHARD_BYTES = 512 * 2**20  # rank 0 holds at most this much of gathered weights while writing final/


def applies(cfg, head: str) -> bool:
    """Sharded loading is used for this run (see the module docstring for when)."""
    from tunelab.models.load import resolve

    if cfg.distributed != "fsdp":
        return False
    if head != "lm" or cfg.adapter not in ("none", "lora"):
        return False
    where = resolve(cfg.model.name)
    return where.kind in ("hf_dir", "embedded") and bool(_weight_files(_folder(where)))


def _folder(where) -> Path:
    from tunelab.models.load import embedded_dir

    return embedded_dir(where.path) if where.kind == "embedded" else Path(where.path)


def _weight_files(folder: Path) -> dict[str, Path]:
    """tensor name -> the safetensors file holding it (one file, or HF's sharded index)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        return {}
    from safetensors import safe_open

    with safe_open(single, "pt") as f:
        return {name: single for name in f.keys()}


def load_sharded(cfg, spec):
    """(model sharded with FSDP2, every rank holding only its shards, tokenizer); `spec`: the adapter
    (models.adapters.AdapterSpec) attached to the empty skeleton before it is sharded."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunelab.models.adapters import attach_adapter
    from tunelab.models.load import load_tokenizer, resolve
    from tunelab.train.dist import setup, shard_model

    dist = setup(cfg)  # the process group, before anything is sharded
    folder = _folder(resolve(cfg.model.name))
    tok = load_tokenizer(cfg.model.name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    config = AutoConfig.from_pretrained(folder)
    dtype = getattr(torch, cfg.model.dtype)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # init_empty_weights leaves the head untied: tie it before FSDP sees two tensors
    if resolve(cfg.model.name).kind == "embedded":  # adapters record a portable base name, as load_model does
        model.config._name_or_path = model.name_or_path = cfg.model.name
    model.eval()
    rng = torch.get_rng_state()  # where peft starts drawing the adapter's weights
    model = attach_adapter(model, tok, spec)
    buffers = {name: b.clone() for name, b in model.named_buffers() if b.device.type != "meta"}
    if dist.world > 1:  # one process: no process group to shard over; the weights go straight to the device
        shard_model(model)
    model.to_empty(device=dist.device)  # each rank allocates its own shard of every parameter, no more
    if dist.world == 1:
        model.tie_weights()  # unsharded, to_empty gives each module its own new tensor: tie them again
    with torch.no_grad():
        for name, buffer in buffers.items():
            model.get_buffer(name).copy_(buffer)
        materialised = _fill_from_files(model, _weight_files(folder), dist.rank, dist.world)
        if cfg.adapter == "lora":
            torch.set_rng_state(rng)
            materialised += _draw_lora(model, dist.rank, dist.world)
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    print(
        f"sharded load, rank {dist.rank}: materialised {materialised:,} of {total:,} parameter bytes",
        file=sys.stderr,
        flush=True,
    )
    return model, tok


def _rows(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of dim 0 that FSDP2 gives `rank` (torch.chunk: ceil(n / world) rows each)."""
    chunk = math.ceil(n / world)
    start = min(rank * chunk, n)
    return start, min(start + chunk, n)


def _local(param) -> torch.Tensor:
    return param.to_local() if hasattr(param, "to_local") else param


def _checkpoint_name(name: str) -> str:
    """A parameter's name in an HF checkpoint, from its name inside a (peft-wrapped) model."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def _fill_from_files(model, files: dict[str, Path], rank: int, world: int) -> int:
    """Copy each parameter's local rows from the safetensors files; bytes read."""
    from safetensors import safe_open

    from tunelab.errors import TunelabError

    handles, read = {}, 0
    try:
        for name, param in model.named_parameters():
            if "lora_" in name:
                continue
            key = _checkpoint_name(name)
            if key not in files:
                raise TunelabError(
                    f"sharded loading: {key} is in the model but not in its safetensors files."
                )
            if files[key] not in handles:
                handles[files[key]] = safe_open(files[key], "pt")
            start, stop = _rows(param.shape[0], rank, world)
            local = _local(param)
            if stop > start:
                rows = handles[files[key]].get_slice(key)[start:stop]  # only these rows are read
                local.copy_(rows.to(local.dtype))
                read += rows.numel() * rows.element_size()
    finally:
        handles.clear()
    return read


def _draw_lora(model, rank: int, world: int) -> int:
    """LoRA weights as peft draws them (nn.Linear's init of A and B, then kaiming A, zero B), in
    module order, full size on CPU (they are small), each rank keeping its rows."""
    from peft.tuners.lora import LoraLayer

    drawn = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter, a in module.lora_A.items():
            b = module.lora_B[adapter]
            full_a = torch.nn.Linear(a.in_features, a.out_features, bias=False).weight
            full_b = torch.nn.Linear(b.in_features, b.out_features, bias=False).weight
            torch.nn.init.kaiming_uniform_(full_a, a=math.sqrt(5))
            torch.nn.init.zeros_(full_b)
            for param, full in ((a.weight, full_a), (b.weight, full_b)):
                start, stop = _rows(full.shape[0], rank, world)
                _local(param).copy_(full[start:stop].to(param.dtype))
                drawn += (stop - start) * full.shape[1] * param.element_size()
    return drawn


def gather_final(dist, model, folder: Path) -> tuple[dict | None, Path | None]:
    """What rank 0 writes as final/ of an FSDP2 model: (an adapter's gathered weights, None), or
    (None, a staging folder of safetensors files) for full fine-tuning; (None, None) on other ranks.
    Every rank calls it (each tensor is gathered by a collective)."""
    owned = dict(model.named_parameters())  # tied weights once, under the name the model owns
    owned.update(dict(model.named_buffers()))
    keys = [k for k in model.state_dict() if k in owned]
    adapter = hasattr(model, "peft_config")
    if adapter:
        keys = [k for k in keys if owned[k].requires_grad]
    staging = folder.with_name(folder.name + ".weights")
    if dist.is_main and not adapter:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    part: dict[str, torch.Tensor] = {}
    files: list[str] = []
    size = 0
    for key in keys:
        value = owned[key].detach()
        full = value.full_tensor() if hasattr(value, "full_tensor") else value
        if not dist.is_main:
            continue
        part[key] = full.cpu().contiguous()
        size += full.numel() * full.element_size()
        if size >= SHARD_BYTES and not adapter:
            files.append(_write_part(staging, part, len(files)))
            part, size = {}, 0
    if not dist.is_main:
        return None, None
    if adapter:
        return part, None
    if part:
        files.append(_write_part(staging, part, len(files)))
    _name_parts(staging, files)
    return None, staging


def _write_part(staging: Path, part: dict, k: int) -> str:
    from safetensors.torch import save_file

    name = f"part-{k}.safetensors"
    save_file(part, staging / name, metadata={"format": "pt"})
    return name


def _name_parts(staging: Path, files: list[str]) -> None:
    """HF's names: model.safetensors for one file; model-0000k-of-0000n.safetensors + index for more."""
    from safetensors import safe_open

    if len(files) == 1:
        os.replace(staging / files[0], staging / "model.safetensors")
        return
    weight_map, total = {}, 0
    for k, file in enumerate(files, 1):
        name = f"model-{k:05d}-of-{len(files):05d}.safetensors"
        os.replace(staging / file, staging / name)
        with safe_open(staging / name, "pt") as f:
            for key in f.keys():
                weight_map[key] = name
                sl = f.get_slice(key)
                total += math.prod(sl.get_shape()) * _dtype_bytes(sl.get_dtype())
    (staging / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
    )


def _dtype_bytes(name: str) -> int:
    return {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4}.get(name, 4)
