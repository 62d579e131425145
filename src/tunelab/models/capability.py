"""Every question about what a model can do, answered in one place.

plain_weights(model)   # may a step run several forwards before its backward?
takes_4d_mask(model)   # may a batch be laid out packed (data/layout.py)?
attends_per_view(model)   # ... and its attention run per continuation (models/attention.py)?
sharded(model)         # FSDP: are the weights DTensor shards?
"""

from __future__ import annotations

MASKABLE = ("sdpa", "eager")  # attention implementations that take an arbitrary 4-D mask


def inner(model):
    """The model inside a DistributedDataParallel wrapper (forwards still go through the wrapper, which
    syncs gradients; attributes such as `disable_adapter` live on the model inside)."""
    return getattr(model, "module", model)


def sharded(model) -> bool:
    """Whether the weights are FSDP shards (DTensor): then every rank must run the same forwards."""
    return any(type(p).__name__ == "DTensor" for p in inner(model).parameters())


def plain_weights(model) -> bool:
    """Neither a DDP wrapper nor sharded (FSDP) weights: a step may then run several forwards before its
    backward (a DDP wrapper expects one forward per backward; under FSDP every rank must run the same ones)."""
    return inner(model) is model and not sharded(model)


def prompt_learning(model) -> tuple[bool, int]:
    """(is the active adapter prompt/prefix tuning, virtual tokens prepended to the sequence)."""
    config = getattr(inner(model), "active_peft_config", None)
    if config is None or not getattr(config, "is_prompt_learning", False):
        return False, 0
    shifted = config.peft_type.value == "PROMPT_TUNING"  # prefix tuning feeds keys/values, not positions
    return True, config.num_virtual_tokens if shifted else 0


def takes_4d_mask(model) -> bool:
    """Whether the model runs a packed layout: an attention that takes a 4-D mask, and no virtual tokens
    (prompt / prefix tuning put their own tokens in front of the sequence)."""
    base = inner(model)
    implementation = getattr(getattr(base, "config", None), "_attn_implementation", None)
    return implementation in MASKABLE and not prompt_learning(model)[0]


def attends_per_view(model) -> bool:
    """Whether a packed batch's attention may run per continuation (models/attention.py): SDPA attention
    (eager attention takes the 4-D mask as it is)."""
    implementation = getattr(getattr(inner(model), "config", None), "_attn_implementation", None)
    return takes_4d_mask(model) and implementation == "sdpa"
