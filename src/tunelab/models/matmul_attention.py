"""Attention as bf16 matrix products on a CPU, for the short sequences that training attends over.

    if matmul_attention.applies(query, key, kwargs):
        out = matmul_attention.attend(query, key, value, allowed, scale)   # (B, Lq, H, D) bf16

PyTorch's CPU flash attention keeps memory at O(L) by recomputing the scores in blocks, and its backward
is slow for the sequences a packed batch holds (a reward-model pair's views of 120-400 positions, an RL
group's row of ~240-430): on SmolLM2's 9 query / 3 key-value heads in bf16, forward + backward of 4
views of 189 positions took 24-26 ms there and 7-9 ms as the products below; one masked row of 430,
20-21 ms against 8-10 (docs/decisions.md, "Attention as matrix products"). Here the scores are one
batched product per key/value head, masked, soft-maxed, and multiplied by the values; the backward is
written out (dV = Pᵀ dO, dP = dO Vᵀ, dS = softmax'(dP), dQ = dS K, dK = dSᵀ Q), so nothing is recomputed.
The price is the probabilities kept for the backward, (B, H, Lq, Lk) in bf16: `applies` takes calls
of at most MAX_SCORES of them (32 MB); the benchmark's reward-model step peaked at 4.13 GB instead of 3.92.

The numbers are those of eager attention under autocast: scores and probabilities rounded to bf16,
the softmax and its backward computed in fp32 within their kernels. In fp32 the products were not
faster than flash attention here, so fp32 keeps SDPA's exact path.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

MAX_SCORES = 1 << 24  # attention probabilities one call may keep for its backward (B * H * Lq * Lk)


def bf16_on_cpu(query: Tensor) -> bool:
    """Whether attention on `query` computes in bf16 on a CPU (bf16 inputs, or autocast to bf16)."""
    if query.device.type != "cpu":
        return False
    autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return query.dtype == torch.bfloat16 or autocast


def plain_scores(kwargs: dict) -> bool:
    """Whether an attention call's scores are q·k scaled and masked, nothing more: no dropout, soft cap,
    position bias or sinks (what transformers passes its attention functions as keywords)."""
    extras = ("softcap", "position_bias", "s_aux", "sinks")
    return not kwargs.get("dropout") and all(kwargs.get(name) is None for name in extras)


def applies(query: Tensor, key: Tensor, kwargs: dict) -> bool:
    """Whether `attend` runs this call: bf16 on a CPU, several queries per row (not a decoding step),
    query heads a multiple of the key/value heads, nothing else in the scores (dropout, a soft cap, a
    bias, sinks), and at most MAX_SCORES probabilities."""
    B, H, Lq, _ = query.shape
    Hkv, Lk = key.shape[1], key.shape[2]
    grouped = H % Hkv == 0
    fits = B * H * Lq * Lk <= MAX_SCORES
    return plain_scores(kwargs) and grouped and Lq > 1 and fits and bf16_on_cpu(query)


def attend(query: Tensor, key: Tensor, value: Tensor, allowed: Tensor | None, scale: float | None) -> Tensor:
    """(B, H, Lq, D) queries, (B, Hkv, Lk, D) keys, (B, Hkv, Lk, Dv) values; `allowed` (B or 1, 1, Lq, Lk)
    booleans (True: the query sees the key), or None for causal attention (Lq == Lk). Returns
    (B, Lq, H, Dv) in bf16, as transformers' attention functions return it. A query that sees no key
    gets the mean of the values (a padding position: nothing reads it), not NaN."""
    B, H, Lq, D = query.shape
    if allowed is None:
        if Lq != key.shape[2]:
            raise ValueError(f"causal attention needs as many queries as keys, got {Lq} and {key.shape[2]}")
        allowed = torch.ones(Lq, Lq, dtype=torch.bool, device=query.device).tril()[None, None]
    q, k, v = (x.to(torch.bfloat16).contiguous() for x in (query, key, value))
    with torch.autocast("cpu", enabled=False):
        out = _MatmulAttention.apply(q, k, v, allowed, D**-0.5 if scale is None else scale)
    return out.view(B, H, Lq, v.shape[-1]).transpose(1, 2)  # values may have their own head size


class _MatmulAttention(torch.autograd.Function):
    """The query heads of each key/value head run as one (G * Lq, D) x (D, Lk) product: query head h uses
    key/value head h // G, as transformers' repeat_kv pairs them, so keys and values are not repeated."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scale: float) -> Tensor:
        B, H, Lq, D = q.shape
        Hkv, Lk = k.shape[1], k.shape[2]
        G = H // Hkv
        grouped = q.view(B, Hkv, G * Lq, D)
        scores = torch.matmul(grouped, k.transpose(-1, -2)).mul_(scale)  # (B, Hkv, G * Lq, Lk)
        hidden = ~allowed.view(allowed.shape[0], 1, 1, Lq, Lk)  # the same for every head
        scores.view(B, Hkv, G, Lq, Lk).masked_fill_(hidden, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1)  # fp32 inside the kernel, rounded to bf16
        ctx.save_for_backward(grouped, k, v, probs)
        ctx.scale, ctx.query_shape = scale, q.shape
        return torch.matmul(probs, v)  # (B, Hkv, G * Lq, Dv) = (B, H, Lq, Dv) in memory

    @staticmethod
    @once_differentiable  # the products below are not themselves differentiated (no double backward)
    def backward(ctx, grad_out: Tensor):
        grouped, k, v, probs = ctx.saved_tensors
        B, Hkv, GLq, _ = grouped.shape
        grad = grad_out.to(torch.bfloat16).reshape(B, Hkv, GLq, v.shape[-1])
        grad_v = torch.matmul(probs.transpose(-1, -2), grad)  # (B, Hkv, Lk, Dv)
        grad_probs = torch.matmul(grad, v.transpose(-1, -2))  # (B, Hkv, G * Lq, Lk)
        grad_scores = torch.ops.aten._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        grad_scores.mul_(ctx.scale)  # masked scores get no gradient: their probabilities are 0
        grad_q = torch.matmul(grad_scores, k).view(ctx.query_shape)
        grad_k = torch.matmul(grad_scores.transpose(-1, -2), grouped)
        return grad_q, grad_k, grad_v, None, None
