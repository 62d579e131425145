"""Put a PEFT adapter on a model (LoRA, DoRA, prompt tuning, prefix tuning) or prepare it for full
fine-tuning. The adapter can be switched off (`model.disable_adapter()`), which gives the reference
model for KL and DPO at no memory cost."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from tunelab.errors import TunelabError

# Attention projections per architecture: the classic LoRA placement. "all-linear" adapts every linear layer.
ATTENTION_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "gpt2": ["attn.c_attn", "attn.c_proj"],
}


def lora_targets(model, targets) -> list[str] | str:
    if isinstance(targets, list):  # names the model lacks: peft would end in a traceback
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        )
        missing = [
            t for t in targets if t not in linear and not any(n.endswith(t) for n, _ in model.named_modules())
        ]
        if missing:
            raise TunelabError(
                f"lora.targets: this model has no module {missing}; its linear layers: {', '.join(linear)}."
            )
    if targets != "auto":
        return targets
    kind = model.config.model_type
    if kind not in ATTENTION_TARGETS:
        return "all-linear"
    return ATTENTION_TARGETS[kind]


def set_dropout(model, p: float) -> None:
    """Every dropout of the model to `p` (config values too, so saved models keep it)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p
    for key, value in model.config.to_dict().items():
        if isinstance(value, float) and ("dropout" in key or "pdrop" in key):
            setattr(model.config, key, p)


@dataclass(frozen=True)
class AdapterSpec:
    """What to attach, in plain values (stages build it from their config: `stages/common.adapter_spec`)."""

    kind: str = "none"  # none | lora | dora | prompt | prefix
    r: int = 16  # LoRA rank
    alpha: float = 32  # LoRA scale numerator
    dropout: float = 0.05  # LoRA dropout
    targets: list[str] | str = "auto"  # module names, "all-linear", or "auto" (attention projections)
    prompt_tokens: int = 20  # virtual tokens of prompt / prefix tuning
    prompt_init_text: str | None = None  # start prompt tuning at these words' embeddings
    model_dropout: float | None = None  # every dropout of the model to this (None: as loaded)
    packed: bool = False  # the data is packed (prompt / prefix tuning cannot train on it)


def _lora(spec: AdapterSpec, model, reward: bool):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.SEQ_CLS if reward else TaskType.CAUSAL_LM,
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=lora_targets(model, spec.targets),
        use_dora=spec.kind == "dora",
    )


def _prompt(spec: AdapterSpec, model, reward: bool):
    from peft import PromptTuningConfig, TaskType

    return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=spec.prompt_tokens)


def _prefix(spec: AdapterSpec, model, reward: bool):
    from peft import PrefixTuningConfig, TaskType

    return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=spec.prompt_tokens)


# adapter name -> its PEFT config (None: full fine-tuning); the names `adapter=` accepts
ADAPTERS = {"none": None, "lora": _lora, "dora": _lora, "prompt": _prompt, "prefix": _prefix}
PROMPT_LEARNING = ("prompt", "prefix")  # virtual tokens: no packing, no reward head


def attach_adapter(model, tok, spec: AdapterSpec):
    """The model ready to train: a PeftModel for adapters, the model itself (all trainable) for `none`."""
    from peft import get_peft_model

    build = ADAPTERS[spec.kind]
    if spec.model_dropout is not None:
        set_dropout(model, spec.model_dropout)
    if build is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if spec.kind in PROMPT_LEARNING and spec.packed:
        raise TunelabError(f"adapter={spec.kind} cannot train on packed sequences: set data.pack=false.")
    reward = hasattr(model, "score")  # a reward model: peft keeps its scalar head trainable (modules_to_save)
    if reward and spec.kind in PROMPT_LEARNING:
        raise TunelabError(f"A reward model trains with adapter=none, lora or dora, not {spec.kind}.")
    peft_model = get_peft_model(model, build(spec, model, reward))
    if spec.kind == "prompt" and spec.prompt_init_text:
        _init_prompt_from_text(peft_model, tok, spec.prompt_init_text, spec.prompt_tokens)
    return peft_model


def _init_prompt_from_text(peft_model, tok, text: str, n: int) -> None:
    """Start the virtual tokens at the embeddings of `text` (repeated or cut to n tokens)."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise TunelabError("prompt.init_text tokenises to nothing; give some words or leave it unset.")
    ids = (ids * (n // len(ids) + 1))[:n]
    with torch.no_grad():
        embeddings = peft_model.get_input_embeddings().weight[torch.tensor(ids)]  # (n, H)
        peft_model.prompt_encoder["default"].embedding.weight.copy_(embeddings)


@contextmanager
def lora_merged(model):
    """LoRA folded into the base weights for forward-only work (sampling), the exact base weights back after.

    Unmerged, every adapted linear layer costs three matmuls and a handful of small ops per forward, a large
    share of a token-by-token decoding step (docs/decisions.md, "LoRA merged while decoding"). Invariant:
    the base weights afterwards are bit for bit those before (peft's `unmerge` subtracts the update again,
    which leaves them a rounding error off after every step; here they are saved and copied back).
    Vanilla LoRA on linear layers only; DoRA, LoRA biases, disabled adapters and sharded weights stay as
    they are (the context does nothing for them).
    The weights change in place, so autocast's cached bf16 casts of them (models/precision.py,
    `weights_cast_once`) are dropped on the way in and out: a forward after the context inside the same
    autocast region would otherwise run the merged weights' cast, plus the adapter again.
    """
    from peft.tuners.lora import Linear as LoraLinear

    from tunelab.models.capability import inner

    layers = [
        m
        for m in inner(model).modules()
        if isinstance(m, LoraLinear)
        and not m.merged
        and not m.disable_adapters
        and not m.lora_variant
        and not any(m.lora_bias.values())
        and type(m.get_base_layer().weight).__name__ != "DTensor"
    ]
    packed = any("forward" in vars(m.get_base_layer()) for m in layers)  # precision.linears_prepacked
    if packed:
        raise RuntimeError("lora_merged inside linears_prepacked: the packed copies would not see the merge")
    with torch.no_grad():
        saved = [m.get_base_layer().weight.detach().clone() for m in layers]
        for m in layers:
            m.merge()
    if layers:
        torch.clear_autocast_cache()
    try:
        yield model
    finally:
        with torch.no_grad():
            for m, weight in zip(layers, saved, strict=True):
                m.get_base_layer().weight.copy_(weight)
                m.merged_adapters.clear()
        if layers:
            torch.clear_autocast_cache()
