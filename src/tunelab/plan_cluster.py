"""`tunelab plan` for several devices: memory per device and time per step, by strategy and precision.

    tunelab plan llama-7b/config.json --devices 64 --gpu H100 --precision bf16
    tunelab plan smollm2-135m --gpu cpu --precision fp32 bf16      # this machine, measured now
    cluster_rows(config, devices=64, strategies=["ddp", "zero3"], precisions=["bf16"], ...)

Nothing is loaded but the config: the parameters Ψ are counted on the meta device (transformers'
`from_config` under `torch.device("meta")`), so a 70B config is planned in seconds on a laptop.

Model states, bytes per device, N devices, Adam (ZeRO paper, Rajbhandari et al. 2020, §3 and Table 1):
- bf16 / fp16 = mixed-precision Adam: 2Ψ weights, 2Ψ gradients, 12Ψ optimizer (fp32 master weights,
  momentum, variance); fp32: 4Ψ + 4Ψ + 8Ψ. Both are 16Ψ in all.
- ddp 16Ψ; zero1 (optimizer sharded) 4Ψ + 12Ψ/N; zero2 (+ gradients) 2Ψ + 14Ψ/N; zero3 (+ weights)
  16Ψ/N. fsdp (torch FSDP2, tunelab's `distributed=fsdp`) shards like zero3 but keeps the shards in
  fp32 and casts to bf16 when it gathers: 4Ψ/N weights, 4Ψ/N gradients, 8Ψ/N moments, 16Ψ/N in all.
- zero3 / fsdp also hold, for a moment, the full weights of the layer being computed and of the one
  prefetched: part `gathered`, 2 layers in the compute dtype (not in the paper's model states).
- LoRA / prompt tuning: the frozen base is held in the compute dtype (sharded only by zero3 / fsdp); the
  trainable parameters follow the rules above.
- `--offload optimizer` moves the optimizer states to host memory (ZeRO-Offload); `--offload params`
  (zero3 / fsdp only) moves the weight shards there too; FSDP2's CPUOffloadPolicy moves shards,
  gradients and the optimizer step together (offload params only). Reported as `host_gb`.

Activations (per device, micro-batch b x T tokens), elements kept for backward per token and layer,
read off HF's Llama layer with SDPA (no T x T attention matrix is kept on a GPU): full fine-tuning
7h + 2kv + 4i (norm inputs and outputs, q, k, v, attention output, o_proj input, MLP gate, up, SiLU
and product); a frozen base keeps no inputs of its projections, LoRA keeps its dropped-out inputs:
10h + 2kv + 3i. With activation checkpointing a layer keeps only its input (h), and one layer's full
set lives again during its recomputation. Logits: b x T x vocab in the compute dtype, plus the fp32
copy and gradient of the loss (8 bytes more). GB here are 10^9 bytes, as in the paper.

Time: 6Ψ per token for full training (2 forward + 4 backward), 4Ψ with a frozen base (no weight
gradients), plus attention's 12 L h T per token; + one forward (2Ψ) with checkpointing. Divided by
the device's dense peak for the precision (GPUS, or `--peak-tflops`) times an assumed MFU (40% on
GPUs, what well-tuned dense training reaches; 55% of the measured matmul speed on this CPU).
Communication is assumed hidden behind compute, which holds for ZeRO-3/FSDP only at large enough
micro-batches; offload is counted as free in time here, which it is not (it is PCIe-bound).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

GB = 1e9  # the ZeRO paper's unit
STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp")
# the order "cheapest" is taken in: less communication first (ZeRO-3/FSDP add an all-gather per layer),
# then activation checkpointing (a third more compute), then offload (host memory and PCIe)
CHEAPEST_ORDER = ("ddp", "zero1", "zero2", "fsdp", "zero3")
HOW_TO_RUN = {
    "ddp": "distributed=ddp",
    "zero1": "DeepSpeed ZeRO-1 (tunelab's deepspeed.zero_stage takes 2 or 3: zero2 costs no more memory)",
    "zero2": "distributed=deepspeed deepspeed.zero_stage=2",
    "zero3": "distributed=deepspeed deepspeed.zero_stage=3",
    "fsdp": "distributed=fsdp",
}
# dense peak TFLOP/s (no sparsity) by precision, from the vendors' data sheets, and memory in GB;
# fp32 is plain fp32 (no TF32 tensor cores)
GPUS = {
    "V100": {"memory_gb": 32, "bf16": None, "fp16": 125, "fp32": 15.7},
    "A10": {"memory_gb": 24, "bf16": 125, "fp16": 125, "fp32": 31.2},
    "L4": {"memory_gb": 24, "bf16": 121, "fp16": 121, "fp32": 30.3},
    "L40S": {"memory_gb": 48, "bf16": 362, "fp16": 362, "fp32": 91.6},
    "A100-40GB": {"memory_gb": 40, "bf16": 312, "fp16": 312, "fp32": 19.5},
    "A100": {"memory_gb": 80, "bf16": 312, "fp16": 312, "fp32": 19.5},
    "H100": {"memory_gb": 80, "bf16": 989, "fp16": 989, "fp32": 67},
    "H100-PCIe": {"memory_gb": 80, "bf16": 756, "fp16": 756, "fp32": 51},
    "H200": {"memory_gb": 141, "bf16": 989, "fp16": 989, "fp32": 67},
    "B200": {"memory_gb": 180, "bf16": 2250, "fp16": 2250, "fp32": 80},
    "MI300X": {"memory_gb": 192, "bf16": 1307, "fp16": 1307, "fp32": 163.4},
}
MFU_GPU = 0.40  # assumed share of the dense peak a training step reaches on a GPU
HEADROOM = (
    0.90  # a plan fits when it needs at most this share of a device (CUDA context, NCCL, fragmentation)
)
# activations kept for backward, elements per token and layer: coefficients of (hidden, kv width, MLP width)
ACTIVATIONS_GPU = {"full": (7, 2, 4), "lora": (10, 2, 3), "prompt": (6, 2, 3)}
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass
class Row:
    """One plan: a strategy at a precision on N devices. Memory in GB (10^9 bytes) per device."""

    method: str
    strategy: str
    precision: str
    devices: int
    offload: str
    checkpointing: bool
    parameters: int
    trainable: int
    memory_gb: dict  # parameters, gradients, optimizer, gathered, activations, logits
    per_device_gb: float
    activations_checkpointed_gb: float
    per_device_gb_checkpointed: float
    host_gb: float
    flops_per_step: float  # per device
    seconds_per_step: float | None
    seconds_per_step_checkpointed: float | None  # with activation checkpointing (one more forward)
    tokens_per_s: float | None  # all devices together
    fits: bool | None = None
    cheapest: bool = False
    run_with: str = ""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def load_config(ref: str):
    """The HF config of a model reference (a name, a folder, a config.json, a hub id in the cache),
    without loading any weights."""
    from transformers import AutoConfig

    from tunelab.errors import TunelabError
    from tunelab.models.load import _from_hf, embedded_dir, resolve

    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
            return AutoConfig.for_model(data.pop("model_type"), **data)
        except (KeyError, ValueError) as exc:
            raise TunelabError(
                f"{ref}: not an HF config.json (it needs a model_type known to transformers): {exc}"
            ) from None
    where = resolve(ref)
    if where.kind == "tiny":
        from tunelab.models.tiny import tiny_model

        return tiny_model(where.path)[0].config
    if where.kind == "embedded":
        return AutoConfig.from_pretrained(embedded_dir(where.path))
    if where.kind == "gguf":
        return AutoConfig.from_pretrained(where.path, gguf_file=where.gguf_file)
    if where.kind == "adapter_dir":
        from tunelab.models.load import _adapter_base

        return load_config(_adapter_base(where.path))
    return _from_hf(AutoConfig, where.path)


def meta_parameter_count(config) -> int:
    """Parameters of the model a config describes, counted on the meta device (no memory, no weights);
    tied weights once. Falls back to plan.count_parameters for configs transformers cannot build."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError):
        from tunelab.plan import count_parameters

        return count_parameters(config)
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


def model_states(params: float, trainable: float, strategy: str, devices: int, precision: str) -> dict:
    """Bytes per device of weights, gradients and optimizer states (the ZeRO paper's model states)."""
    n, k = devices, BYTES[precision]
    mixed = precision != "fp32"
    frozen = params - trainable
    sharded_weights = strategy in ("zero3", "fsdp")
    if strategy == "fsdp":  # fp32 shards: weights are the master copy; gradients reduced in fp32
        weights, grads, optim = 4 * trainable / n, 4 * trainable / n, 8 * trainable / n
    else:
        weights = k * trainable / (n if sharded_weights else 1)
        grads = k * trainable / (n if strategy in ("zero2", "zero3") else 1)
        optim = (12 if mixed else 8) * trainable / (1 if strategy == "ddp" else n)
    weights += k * frozen / (n if sharded_weights else 1)
    return {"parameters": weights, "gradients": grads, "optimizer": optim}


def _dims(config) -> dict:
    from tunelab.plan import _dims as dims

    return dims(config)


def activation_bytes(config, method: str, tokens: int, precision: str, checkpointing: bool) -> float:
    """Bytes of activations kept for backward on one device holding `tokens` tokens."""
    d = _dims(config)
    ch, ckv, ci = ACTIVATIONS_GPU[method]
    per_layer = tokens * (ch * d["h"] + ckv * d["kv"] + ci * d["i"]) * BYTES[precision]
    if checkpointing:  # each layer's input, plus one layer recomputed at a time
        return d["layers"] * tokens * d["h"] * BYTES[precision] + per_layer
    return d["layers"] * per_layer


def peak_tflops(gpu: str, precision: str, override: float | None) -> tuple[float | None, str]:
    """(dense peak TFLOP/s, where it comes from) of a device for a precision."""
    if override:
        return override, f"{override:g} TFLOP/s (--peak-tflops)"
    if gpu == "cpu":
        from tunelab.plan import machine_gflops

        value = machine_gflops(dtype="bfloat16" if precision == "bf16" else "float32") / 1e3
        return value, f"{value * 1e3:.0f} GFLOP/s {precision} matmul measured on this CPU now"
    value = GPUS[gpu][precision]
    return (
        value,
        f"{gpu} dense {precision} peak {value} TFLOP/s (data sheet)" if value else f"{gpu}: no {precision}",
    )


def plan_row(
    config,
    *,
    method: str = "full",
    strategy: str = "ddp",
    precision: str = "bf16",
    devices: int = 1,
    batch_size: int = 1,
    seq_len: int = 2048,
    grad_accum: int = 1,
    lora_r: int = 16,
    prompt_tokens: int = 20,
    offload: str = "none",
    checkpointing: bool = False,
    tflops: float | None = None,
    mfu: float = MFU_GPU,
    params: int | None = None,
) -> Row:
    """Memory per device (GB) and time per optimizer step of one strategy; `tflops`: the device's peak."""
    from tunelab.plan import trainable_parameters

    d = _dims(config)
    params = params or meta_parameter_count(config)
    trainable = params if method == "full" else trainable_parameters(config, method, lora_r, prompt_tokens)
    notes = []
    states = model_states(params, trainable, strategy, devices, precision)
    host = 0.0
    if offload in ("optimizer", "params"):
        host += states["optimizer"]
        states["optimizer"] = 0.0
    if offload == "params":
        if strategy in ("zero3", "fsdp"):
            host += states["parameters"]
            states["parameters"] = 0.0
        else:
            notes.append("--offload params needs zero3 or fsdp: weights stay on the device")
    if (
        strategy == "fsdp" and offload != "none"
    ):  # CPUOffloadPolicy: shards, gradients and the step on the host
        host += states["gradients"]
        states["gradients"] = 0.0
    k = BYTES[precision]
    layer_params = (params - d["vocab"] * d["h"] * (1 if d["tied"] else 2)) / d["layers"]
    gathered = 2 * layer_params * k if strategy in ("zero3", "fsdp") and devices > 1 else 0.0
    T = seq_len + (prompt_tokens if method == "prompt" else 0)
    tokens = batch_size * T  # per device and micro-batch
    plain = activation_bytes(config, method, tokens, precision, checkpointing=False)
    ckpt = activation_bytes(config, method, tokens, precision, checkpointing=True)
    logits = tokens * d["vocab"] * (k + 8)
    memory = {
        **states,
        "gathered": gathered,
        "activations": ckpt if checkpointing else plain,
        "logits": logits,
    }
    base = sum(v for key, v in memory.items() if key != "activations")
    per_token = (6 if method == "full" else 4) * params + 12 * d["layers"] * d["h"] * T
    again = 2 * params + 4 * d["layers"] * d["h"] * T  # checkpointing runs the forward again
    flops = (per_token + (again if checkpointing else 0)) * tokens * grad_accum
    seconds = flops / (tflops * 1e12 * mfu) if tflops else None
    flops_ckpt = (per_token + again) * tokens * grad_accum
    seconds_ckpt = flops_ckpt / (tflops * 1e12 * mfu) if tflops else None
    return Row(
        method=method,
        strategy=strategy,
        precision=precision,
        devices=devices,
        offload=offload,
        checkpointing=checkpointing,
        parameters=params,
        trainable=trainable,
        memory_gb={key: round(v / GB, 4) for key, v in memory.items()},
        per_device_gb=round((base + memory["activations"]) / GB, 3),
        activations_checkpointed_gb=round(ckpt / GB, 3),
        per_device_gb_checkpointed=round((base + ckpt) / GB, 3),
        host_gb=round(host / GB, 3),
        flops_per_step=flops,
        seconds_per_step=seconds,
        seconds_per_step_checkpointed=seconds_ckpt,
        tokens_per_s=tokens * grad_accum * devices / seconds if seconds else None,
        run_with=HOW_TO_RUN[strategy] + _offload_how(strategy, offload),
        notes=notes,
    )


def _offload_how(strategy: str, offload: str) -> str:
    if offload == "none":
        return ""
    if offload == "optimizer" and strategy in ("zero2", "zero3"):
        return " deepspeed.offload=cpu"
    return " + host offload of the weights (DeepSpeed offload_param / FSDP2 CPUOffloadPolicy: not in tunelab's config yet)"


def cheapest(rows: list[Row], device_gb: float) -> tuple[Row, bool] | None:
    """(row, needs activation checkpointing) of the cheapest plan that fits a device of `device_gb`
    GB: without offload before with it, without checkpointing before with it, in CHEAPEST_ORDER."""
    budget = HEADROOM * device_gb
    order = {"none": 0, "optimizer": 1, "params": 2}
    candidates = sorted(
        rows, key=lambda r: (order[r.offload], CHEAPEST_ORDER.index(r.strategy), r.precision != "bf16")
    )
    for offload in ("none", "optimizer", "params"):
        group = [r for r in candidates if r.offload == offload]
        for checkpointed in (False, True):
            for row in group:
                need = row.per_device_gb_checkpointed if checkpointed else row.per_device_gb
                if need <= budget:
                    return row, checkpointed
    return None


def cluster_rows(
    config,
    *,
    methods: list[str],
    strategies: list[str],
    precisions: list[str],
    devices: int,
    gpu: str,
    device_memory: float | None = None,
    peak: float | None = None,
    mfu: float | None = None,
    offloads: list[str] | None = None,
    **shape,
) -> tuple[list[Row], dict]:
    """Every (method, strategy, precision, offload) row, each marked whether it fits, and the
    assumptions used (peaks, MFU, memory per device)."""
    params = meta_parameter_count(config)
    memory = device_memory or (GPUS[gpu]["memory_gb"] if gpu in GPUS else _host_memory_gb())
    if mfu is None:
        from tunelab.plan import EFFICIENCY

        mfu = EFFICIENCY if gpu == "cpu" else MFU_GPU
    peaks = {p: peak_tflops(gpu, p, peak) for p in precisions}
    rows = []
    for method in methods:
        for precision in precisions:
            for strategy in strategies:
                for offload in offloads or ["none"]:
                    if strategy == "ddp" and devices > 1 and offload != "none":
                        continue  # offload is a ZeRO / FSDP feature
                    if strategy == "fsdp" and offload == "optimizer":
                        continue  # FSDP2 offloads weights, gradients and optimizer together (offload params)
                    row = plan_row(
                        config,
                        method=method,
                        strategy=strategy,
                        precision=precision,
                        devices=devices,
                        offload=offload,
                        tflops=peaks[precision][0],
                        mfu=mfu,
                        params=params,
                        **shape,
                    )
                    row.fits = row.per_device_gb <= HEADROOM * memory
                    rows.append(row)
    for method in methods:
        pick = cheapest([r for r in rows if r.method == method], memory)
        if pick is not None:
            pick[0].cheapest = True
            if pick[1]:
                pick[0].notes.append(
                    "fits with activation checkpointing: add train.activation_checkpointing=true"
                )
    assumptions = {
        "device": gpu,
        "device_memory_gb": memory,
        "fits_below_gb": round(HEADROOM * memory, 2),
        "mfu": mfu,
        "peaks": {p: why for p, (_, why) in peaks.items()},
    }
    return rows, assumptions


def _host_memory_gb() -> float:
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
