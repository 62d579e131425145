"""`tunelab plan`: what a run will need before it starts — memory, time, and (for pre-training) data.

    tunelab plan smollm2-135m --method lora --batch-size 8 --seq-len 256 --steps 20
    estimate(config, "full", batch_size=8, seq_len=256)     # -> Plan with MB per part and s/step

Memory, fp32 training with AdamW, no activation checkpointing:
- weights: every parameter, 4 bytes; optimizer: trainable parameters x 8 bytes (AdamW's two moments);
- activations kept for backward, per layer and token: 4 x (a h + b i) bytes (h hidden, i the MLP width)
  plus the attention weights (2 x heads x T per token, materialised by CPU attention); a and b depend on
  the method (ACTIVATIONS) and were fitted to measured peaks of `tunelab sft` on SmolLM2-135M;
- gradients (trainable x 4 bytes) fill while activations are freed during backward, so the peak holds
  the larger of the two, not both;
- logits at the labelled positions only (the loss asks for no others): 3 x B x targets x V x 4 bytes;
- runtime: Python, torch, the tokenizer and logging, a constant measured on this machine.
The ladder prints the estimate next to each training rung's measured peak.

Data: compute-optimal pre-training wants ~20 tokens per parameter (Chinchilla, Hoffmann et al. 2022),
so `--data` (a `tunelab data tokenize` folder, or text files estimated at 4 bytes per token) says which
model size the data trains well, and how much of the planned model's need it covers; repeating data
for up to ~4 epochs is nearly as good as new data (Muennighoff et al. 2023), more helps little.

Time: 2 x parameters x tokens FLOPs forward (+ attention), x 3 for full training (forward, input
gradients, weight gradients), x ~2 for adapters (no weight gradients for the frozen base), divided by
this machine's measured matmul speed and an efficiency factor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

RUNTIME_MB = 450.0  # python, torch, transformers, peft, the tokenizer, the loop's logging
# activations kept for backward, floats per token and layer: (x hidden, x MLP width); fitted to peaks
# measured on SmolLM2-135M (batch 8 x 96 tokens): frozen weights keep fewer (no weight gradients), LoRA
# keeps the dropped-out input of every adapted projection besides
ACTIVATIONS = {"full": (18, 5), "lora": (24, 5), "prompt": (7, 4)}
EFFICIENCY = 0.55  # share of peak matmul speed a training step reaches on CPU (small matmuls, overheads)
TOKENS_PER_PARAM = 20  # compute-optimal pre-training data (Chinchilla): ~20 tokens per parameter
BYTES_PER_TOKEN_TEXT = 4.0  # English text on disk per token (UTF-8, BPE tokenizers)


@dataclass
class Plan:
    method: str
    params: int
    trainable: int
    weights_mb: float
    grads_optimizer_mb: float
    activations_mb: float
    logits_mb: float
    runtime_mb: float
    total_mb: float
    flops_per_step: float
    seconds_per_step: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _dims(config) -> dict:
    """Sizes of a decoder-only config, whatever the family calls them."""
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    return {
        "h": hidden,
        "layers": layers,
        "heads": heads,
        "kv": kv_heads * hidden // heads,
        "i": inner,
        "vocab": config.vocab_size,
        "tied": bool(getattr(config, "tie_word_embeddings", True)),
        "gated": getattr(config, "model_type", "") not in ("gpt2",),
    }


def count_parameters(config) -> int:
    d = _dims(config)
    attention = 2 * d["h"] * d["h"] + 2 * d["h"] * d["kv"]
    mlp = (3 if d["gated"] else 2) * d["h"] * d["i"]
    embeddings = d["vocab"] * d["h"] * (1 if d["tied"] else 2)
    return d["layers"] * (attention + mlp + 2 * d["h"]) + embeddings + d["h"]


def trainable_parameters(config, method: str, lora_r: int = 16, prompt_tokens: int = 20) -> int:
    d = _dims(config)
    if method == "full":
        return count_parameters(config)
    if method == "lora":  # q, k, v, o: A (r x in) + B (out x r) each
        per_layer = lora_r * ((d["h"] + d["h"]) * 2 + (d["h"] + d["kv"]) * 2)
        return d["layers"] * per_layer
    if method == "prompt":
        return prompt_tokens * d["h"]
    raise ValueError(method)


def estimate(
    config,
    method: str,
    *,
    batch_size: int,
    seq_len: int,
    lora_r: int = 16,
    prompt_tokens: int = 20,
    gflops: float | None = None,
    target_len: int | None = None,
) -> Plan:
    """Memory (MB) and, given the machine's matmul GFLOP/s, seconds per optimizer step."""
    d = _dims(config)
    params = count_parameters(config)
    trainable = trainable_parameters(config, method, lora_r, prompt_tokens)
    T = seq_len + (prompt_tokens if method == "prompt" else 0)
    tokens = batch_size * T
    mb = 2**20
    weights = params * 4 / mb
    hidden_floats, inner_floats = ACTIVATIONS[method]
    per_token_layer = 4 * (hidden_floats * d["h"] + inner_floats * d["i"] + 2 * d["heads"] * T)
    activations = d["layers"] * tokens * per_token_layer / mb
    logits = 3 * batch_size * (target_len or T) * d["vocab"] * 4 / mb
    optimizer, grads = trainable * 8 / mb, trainable * 4 / mb
    # gradients fill as activations are freed during backward: the peak holds the larger of the two
    total = RUNTIME_MB + weights + optimizer + max(activations, grads) + logits
    forward = 2 * params * tokens + 2 * d["layers"] * batch_size * T * T * d["h"]
    flops = forward * (3 if method == "full" else 2)
    seconds = flops / (gflops * 1e9 * EFFICIENCY) if gflops else None
    return Plan(
        method,
        params,
        trainable,
        weights,
        optimizer + grads,
        activations,
        logits,
        RUNTIME_MB,
        total,
        flops,
        seconds,
    )


def machine_gflops(size: int = 1024, repeats: int = 5, dtype: str = "float32") -> float:
    """Matmul speed of this machine now in `dtype` (models/precision.py measures it)."""
    from tunelab.models import precision

    return precision.machine_gflops(size, repeats, dtype)


def pretraining_data(params: int) -> dict:
    """Tokens and disk for compute-optimal pre-training of a model with `params` parameters."""
    tokens = TOKENS_PER_PARAM * params
    return {"tokens": tokens, "disk_gb": tokens * BYTES_PER_TOKEN_TEXT / 1e9}


def data_tokens(paths: list[str]) -> tuple[int, str]:
    """(tokens, how they were counted) in token folders (exact) or text files (bytes / 4)."""
    from pathlib import Path

    from tunelab.data.prep.tokenize import read_meta

    counted = estimated = 0
    for path in paths:
        meta = read_meta(path)
        if meta is not None:
            counted += meta["n_tokens"]
            continue
        p = Path(path)
        files = [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p]
        estimated += sum(f.stat().st_size * (3 if f.suffix == ".gz" else 1) for f in files if f.exists())
    tokens = counted + round(estimated / BYTES_PER_TOKEN_TEXT)
    how = "counted" if not estimated else f"estimated at {BYTES_PER_TOKEN_TEXT:g} bytes of text per token"
    return tokens, how


def data_fit(tokens: int, params: int) -> dict:
    """What `tokens` of data are worth: the model size they train compute-optimally, and the share of
    a `params` model's compute-optimal data they cover (epochs needed to reach it)."""
    need = TOKENS_PER_PARAM * params
    return {
        "optimal_params": tokens / TOKENS_PER_PARAM,
        "tokens_needed": need,
        "coverage": tokens / need,
        "epochs_needed": need / max(tokens, 1),
    }
