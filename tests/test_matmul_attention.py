"""CPU bf16 attention as matrix products (models/matmul_attention.py): the attention SDPA computes, within
bf16 rounding, forward and backward, for causal views, per-view masks and packed rows' masks; taken only
where it applies.

Tolerance: relative error (Frobenius norm) of the output and of each gradient <= 1% against float64
attention on the same bf16 inputs. bf16 keeps 8 bits of mantissa (~0.4% per rounding); scores,
probabilities and the gradients' products are each rounded once. Measured here: 0.2-0.5%, as CPU flash
attention's own bf16 results are.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunelab.models import matmul_attention

H, HKV, D = 6, 2, 16  # grouped-query attention: 3 query heads per key/value head


def inputs(B: int, Lq: int, Lk: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, H, Lq, D, generator=g) * 0.8).to(torch.bfloat16).requires_grad_()
    k = torch.randn(B, HKV, Lk, D, generator=g).to(torch.bfloat16).requires_grad_()
    v = torch.randn(B, HKV, Lk, D, generator=g).to(torch.bfloat16).requires_grad_()
    grad = torch.randn(B, Lq, H, D, generator=g).to(torch.bfloat16)
    return q, k, v, grad


def exact(q, k, v, allowed, grad):
    """float64 SDPA on the same (bf16-valued) inputs: (output (B, Lq, H, D), (dq, dk, dv))."""
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    if allowed is None:
        out = F.scaled_dot_product_attention(q64, k64, v64, is_causal=True, enable_gqa=True)
    else:
        out = F.scaled_dot_product_attention(q64, k64, v64, attn_mask=allowed, enable_gqa=True)
    out = out.transpose(1, 2)
    out.backward(grad.double())
    return out.detach(), (q64.grad, k64.grad, v64.grad)


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.detach().double() - want).norm() / want.norm())


def view_masks(B: int, Lq: int, Lk: int) -> torch.Tensor:
    """Later views' masks (models/attention.view_mask): query i of view b sees keys 0 .. skip_b + i."""
    skip = torch.tensor([Lk - Lq, Lk - Lq - 3])[:B]
    seen = skip[:, None, None] + torch.arange(Lq)[None, :, None]
    return (torch.arange(Lk)[None, None, :] <= seen)[:, None]


def packed_row(L: int) -> torch.Tensor:
    """One row of two segments: a prompt of L // 2 and two continuations that each see it and themselves."""
    allowed = torch.zeros(L, L, dtype=torch.bool)
    p, c = L // 2, L // 4
    allowed[:, :p] = True
    allowed[p : p + c, p : p + c] = True
    allowed[p + c :, p + c :] = True
    return allowed.tril()[None, None]


@pytest.mark.parametrize(
    "case, B, Lq, Lk",
    [("causal views", 3, 40, 40), ("later views", 2, 17, 45), ("a packed row", 1, 48, 48)],
)
def test_the_products_give_sdpas_attention_and_gradients_within_bf16_rounding(case, B, Lq, Lk):
    q, k, v, grad = inputs(B, Lq, Lk)
    allowed = {"causal views": None, "later views": view_masks(B, Lq, Lk), "a packed row": packed_row(Lq)}[
        case
    ]
    out = matmul_attention.attend(q, k, v, allowed, None)
    assert out.shape == (B, Lq, H, D) and out.dtype == torch.bfloat16
    out.backward(grad)
    want, grads = exact(q, k, v, allowed, grad)
    assert relative(out, want) <= 1e-2
    for name, x, g in zip("qkv", (q, k, v), grads, strict=True):
        assert x.grad.dtype == torch.bfloat16 and relative(x.grad, g) <= 1e-2, name


def test_a_query_that_sees_no_key_gets_the_mean_of_the_values_not_nan():
    q, k, v, grad = inputs(1, 4, 4)
    allowed = torch.ones(4, 4, dtype=torch.bool).tril()
    allowed[0] = False  # a left-padding position: nothing to see
    out = matmul_attention.attend(q, k, v, allowed[None, None], None)
    out.backward(grad)
    mean = v.detach().float().mean(dim=2).repeat_interleave(H // HKV, dim=1)[0]  # (H, D): each head's values
    assert torch.allclose(out[0, 0].float(), mean, atol=1e-2)
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


def test_fp32_inputs_under_autocast_are_computed_in_bf16():
    q, k, v, _ = inputs(1, 8, 8)
    q32, k32, v32 = (x.detach().float() for x in (q, k, v))
    assert not matmul_attention.applies(q32, k32, {})  # fp32 keeps SDPA's exact path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert matmul_attention.applies(q32, k32, {})
        out = matmul_attention.attend(q32, k32, v32, None, None)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, matmul_attention.attend(q.detach(), k.detach(), v.detach(), None, None))


def test_it_is_left_out_where_sdpa_must_compute(monkeypatch):
    q, k, _, _ = inputs(2, 8, 8)
    assert matmul_attention.applies(q, k, {"dropout": 0.0, "scaling": 0.25})
    assert not matmul_attention.applies(q, k, {"dropout": 0.1})  # attention dropout
    assert not matmul_attention.applies(q, k, {"softcap": 30.0})  # something else in the scores
    assert not matmul_attention.applies(q[:, :, :1], k, {})  # one query per row: a decoding step
    assert not matmul_attention.applies(q[:, :5], k, {})  # 5 query heads on 2 key/value heads
    monkeypatch.setattr(matmul_attention, "MAX_SCORES", 2 * H * 8 * 8 - 1)
    assert not matmul_attention.applies(q, k, {})  # the probabilities it would keep are too many
