"""AdamW with decoupled weight decay (never on norms or biases) and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from tunelab.config.schema import TrainSection


def param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # matrices decay; vectors (norm gains, biases) and anything named so do not
        (no_decay if p.ndim < 2 or "norm" in name.lower() or name.endswith("bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model, cfg: TrainSection) -> torch.optim.Optimizer:
    # foreach kernels are faster on CPU than the per-parameter loop; fused only exists for some devices
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, foreach=True
    )


def warmup_steps(cfg: TrainSection, total: int) -> int:
    return int(cfg.warmup) if cfg.warmup >= 1 else math.ceil(cfg.warmup * total)


def lr_at(step: int, total: int, cfg: TrainSection) -> float:
    """Learning rate for the update made at `step` (0-based): linear warm-up, then the schedule to 0."""
    warm = warmup_steps(cfg, total)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warm) / max(1, total - warm)  # 0 at the end of warm-up, -> 1 at the last step
    if cfg.schedule == "linear":
        return cfg.lr * (1.0 - progress)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
