"""What every training stage does before the loop: seed, load the model, attach the adapter, render data."""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from tunelab.config.schema import StageConfig
from tunelab.data.render import RenderOptions, Tokenized, fit_length, render_row
from tunelab.data.split import split_holdout  # noqa: F401  (stages import it from here)


def in_precision(main):
    """A command's `main(cfg)`, run with every forward in the config's precision (`train.precision`, or
    `precision` for eval and the ladder), resolved once on this machine (models/precision.py)."""
    from tunelab.models import precision

    @functools.wraps(main)
    def run(cfg):
        train = getattr(cfg, "train", None)
        requested = getattr(train, "precision", None) or getattr(cfg, "precision", "auto")
        with precision.using(precision.resolve(requested)):
            return main(cfg)

    return run


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_model(cfg: StageConfig, head: str = "lm"):
    """(model ready to train, tokenizer): new adapter (and reward head) weights are drawn from `cfg.seed`."""
    from tunelab.models.adapters import attach_adapter
    from tunelab.models.load import load_model

    spec = adapter_spec(cfg)  # a bad adapter name fails before the model loads
    seed_everything(cfg.seed)
    from tunelab.train import sharded_load

    if sharded_load.applies(cfg, head):  # FSDP: each rank reads only its shards (no full copy anywhere)
        model, tok = sharded_load.load_sharded(cfg, spec)
    else:
        model, tok = load_model(cfg.model.name, dtype=cfg.model.dtype, seed=cfg.seed, head=head)
        model = attach_adapter(model, tok, spec)
    if cfg.train.activation_checkpointing:
        checkpoint_activations(model)
    return model, tok


def checkpoint_activations(model) -> None:
    """HF gradient checkpointing on the decoder layers (non-reentrant torch.utils.checkpoint): each
    layer keeps only its input and recomputes the rest in backward. The loss and gradients equal those
    without it (tests/test_activation_checkpointing.py). transformers checkpoints each layer's
    `forward`, so an FSDP2 unit's hooks (gather before, free after) stay outside the recomputation."""
    from tunelab.errors import TunelabError

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise TunelabError(
            f"train.activation_checkpointing: {type(base).__name__} does not support gradient "
            "checkpointing; set train.activation_checkpointing=false."
        )
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x's name for it
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "peft_config") and not hasattr(base, "_require_grads_hook"):
        base.enable_input_require_grads()  # a frozen base: the embeddings' output must need a gradient


def adapter_spec(cfg: StageConfig):
    """The config's adapter keys as the plain `AdapterSpec` that models/ takes."""
    from tunelab.config.variants import pick
    from tunelab.models.adapters import ADAPTERS, AdapterSpec

    pick(ADAPTERS, cfg.adapter, "adapter")
    return AdapterSpec(
        kind=cfg.adapter,
        r=cfg.lora.r,
        alpha=cfg.lora.alpha,
        dropout=cfg.lora.dropout,
        targets=cfg.lora.targets,
        prompt_tokens=cfg.prompt.tokens,
        prompt_init_text=cfg.prompt.init_text,
        model_dropout=cfg.model.dropout,
        packed=bool(getattr(cfg.data, "pack", False)),
    )


def render_options(cfg: StageConfig) -> RenderOptions:
    return RenderOptions(
        separator=cfg.data.separator, instruction=cfg.data.instruction, system=cfg.data.system
    )


@dataclass
class RenderStats:
    rows: int = 0
    kept: int = 0
    dropped: int = 0
    truncated: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    examples: list[str] = field(default_factory=list)

    def as_report(self, name: str) -> dict:
        return {
            f"{name} rows": f"{self.rows} ({self.dropped} dropped, {self.truncated} truncated as too long)",
            f"{name} tokens": f"{self.tokens:,} ({self.trained_tokens:,} trained)",
        }


def render_rows(rows: list[dict], tok, cfg: StageConfig) -> tuple[list[Tokenized], RenderStats]:
    """Render and fit every row to train.max_len under the data.overlong policy, counting what happened."""
    opts = render_options(cfg)
    stats = RenderStats(rows=len(rows))
    items = []
    for row in rows:
        item = render_row(tok, row, opts)
        fitted = fit_length(item, cfg.train.max_len, cfg.data.overlong)
        if fitted is None:
            stats.dropped += 1
            continue
        stats.truncated += len(fitted.input_ids) < len(item.input_ids)
        stats.tokens += len(fitted.input_ids)
        stats.trained_tokens += fitted.n_trained
        items.append(fitted)
    stats.kept = len(items)
    return items, stats
