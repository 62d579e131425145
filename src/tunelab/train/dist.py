"""One process or N: the few places where a run on several processes differs from a run on one.

    torchrun --nproc_per_node 2 -m tunelab sft configs/sft.yaml distributed=ddp
    accelerate launch --multi_gpu --num_processes 8 -m tunelab sft configs/sft.yaml distributed=fsdp

tunelab builds no distribution of its own. DDP and DeepSpeed come through `accelerate`; FSDP2 is
torch's `fully_shard`, applied to each decoder layer and then to the whole model. Everything the loop
needs to know is here: wrapping the model, syncing gradients only on a step's last micro-batch, sums
over ranks, the gradient norm, and the full weights for `final/`. Checkpoints (sharded under FSDP)
live in train/checkpoint.py and ask this object who writes what.

Under several processes every rank holds the whole batch source and takes its own share of each
global micro-batch (`source.shard(dist)`); the loss is divided by the target count of the global
batch, so N processes x micro-batch b give the update of 1 process x micro-batch N*b.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch

from tunelab.data.shard import share
from tunelab.errors import TunelabError
from tunelab.train.process import unpool_large_blocks


@dataclass
class Dist:
    """Who this process is among its peers; a single process is rank 0 of 1."""

    mode: str = "none"  # none | ddp | fsdp | deepspeed (what actually runs)
    rank: int = 0
    world: int = 1
    accelerator: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """FSDP: each rank holds a shard of every parameter; saving and loading are collective."""
        return self.mode == "fsdp"

    @property
    def device(self) -> torch.device:
        return self.accelerator.device if self.accelerator is not None else torch.device("cpu")

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64, so sums of many token counts stay exact)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t.tolist()

    def mean_dict(self, values: dict[str, float]) -> dict[str, float]:
        """Mean over ranks of numbers every rank has under the same keys."""
        if self.world == 1 or not values:
            return values
        keys = sorted(values)
        sums = self.sum([values[k] for k in keys])
        return {k: s / self.world for k, s in zip(keys, sums)}

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (a stop request must stop all ranks together)."""
        return bool(self.sum([float(flag)])[0]) if self.world > 1 else flag

    def gather(self, items: list) -> list:
        """Every rank's list, concatenated in rank order (small Python objects: rewards, texts)."""
        if self.world == 1:
            return list(items)
        out: list[list] = [None] * self.world  # type: ignore[list-item]
        torch.distributed.all_gather_object(out, items)
        return [x for part in out for x in part]

    def share(self, n: int) -> tuple[int, int]:
        return share(n, self.rank, self.world)

    # --- the model -------------------------------------------------------------------------------

    def wrap(self, model, build_optimizer):
        """(model to train, optimizer). FSDP shards first, so the optimizer sees the sharded parameters."""
        if self.sharded and self.world > 1:  # one process: nothing to shard (checkpoints keep the format)
            from torch.distributed.fsdp import FSDPModule

            if not isinstance(model, FSDPModule):  # train/sharded_load.py shards while it loads
                shard_model(model)
            return model, build_optimizer(model)
        optimizer = build_optimizer(model)
        return self.accelerator.prepare(model, optimizer)

    def unwrap(self, model):
        """The model itself: FSDP2 shards in place; otherwise accelerate's wrapper (DDP even for one
        torchrun process) comes off."""
        if self.sharded and self.world > 1:
            return model
        return self.accelerator.unwrap_model(model) if self.accelerator is not None else model

    def no_sync(self, model, sync: bool):
        """Gradients are reduced over ranks only on a step's last micro-batch."""
        if sync or self.world == 1:
            return contextlib.nullcontext()
        if self.sharded:
            return _fsdp_no_sync(model)
        return self.accelerator.no_sync(model)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def clip_grad_norm(self, params: list, max_norm: float) -> float:
        """The global gradient norm (before clipping); under FSDP the shards' norms are combined."""
        if not params:
            return 0.0
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # a DTensor: this rank's view of a sharded reduction
            norm = norm.full_tensor()
        return float(norm)

    def full_state(self, model) -> dict | None:
        """FSDP: the whole state dict, gathered onto rank 0 (None elsewhere). Otherwise None: the model
        saves itself. Every rank must call it under FSDP (it is a collective)."""
        if self.mode == "deepspeed":  # ZeRO-3 holds shards: accelerate gathers them (a collective)
            state = self.accelerator.get_state_dict(model)
            return state if self.is_main else None
        if not self.sharded or self.world == 1:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.is_main:
            return None
        # tied weights (embeddings = head) come back as two tensors: keep the name the model owns
        owned = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
        return {name: value for name, value in state.items() if name in owned}


SINGLE = Dist()


def to_device(value, device: torch.device):
    """A batch (a dataclass of tensors, lists, dicts and numbers) with every tensor on `device`."""
    import dataclasses

    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        moved = {
            f.name: to_device(getattr(value, f.name), device) for f in dataclasses.fields(value) if f.init
        }
        return dataclasses.replace(value, **moved)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def main_process() -> bool:
    """Rank 0 (or the only process): the one that writes files after training."""
    return int(os.environ.get("RANK", "0")) == 0


def setup(cfg) -> Dist:
    """The Accelerator and this process's place, from the launcher's environment and `distributed`."""
    from accelerate import Accelerator

    mode = cfg.distributed
    cpu = not torch.cuda.is_available()
    if mode == "deepspeed":
        accelerator = Accelerator(deepspeed_plugin=_deepspeed_plugin(cfg, cpu))
    else:
        accelerator = Accelerator(cpu=cpu)
    world = accelerator.num_processes
    if mode == "none" and world > 1:
        mode = "ddp"  # launched on several processes: the launcher asked for data parallelism
    if mode == "fsdp":  # sharded to save memory: what a step frees goes back to the OS (CPU only)
        unpool_large_blocks()
    return Dist(mode=mode, rank=accelerator.process_index, world=world, accelerator=accelerator)


def _deepspeed_plugin(cfg, cpu: bool):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise TunelabError(
            "distributed=deepspeed needs DeepSpeed: pip install 'tunelab[deepspeed]' "
            "(on a machine with GPUs; here use distributed=ddp or fsdp)."
        )
    if cpu:
        raise TunelabError(
            "distributed=deepspeed runs on GPUs; on CPU use distributed=ddp or fsdp (gloo backend)."
        )
    from accelerate.utils import DeepSpeedPlugin

    tc = cfg.train
    return DeepSpeedPlugin(
        zero_stage=cfg.deepspeed.zero_stage,
        gradient_accumulation_steps=tc.grad_accum,
        gradient_clipping=tc.max_grad_norm or None,
        offload_optimizer_device=cfg.deepspeed.offload,
    )


def decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers model (its `_no_split_modules` classes)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise TunelabError(
            f"distributed=fsdp: cannot find the decoder layers of {type(base).__name__} "
            "(it lists no _no_split_modules)."
        )
    return layers


def shard_model(model) -> None:
    """FSDP2: each decoder layer is its own unit (gathered just before its forward, freed after), and
    the rest (embeddings, final norm, head) is the root unit. Untied input and output embeddings are
    units of their own too: the root stays gathered from forward to the end of backward, and with a
    32k vocabulary these two are the largest tensors of a small model (0.5 GB a rank at hidden 1024)."""
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer)
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is not None and head.weight is not embeddings.weight:
        fully_shard(embeddings)
        fully_shard(head)
    fully_shard(model)


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
