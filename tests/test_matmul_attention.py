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


def inputs(B: int, Lq: int, Lk: int, seed: int = 0, Dv: int = D):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, H, Lq, D, generator=g) * 0.8).to(torch.bfloat16).requires_grad_()
    k = torch.randn(B, HKV, Lk, D, generator=g).to(torch.bfloat16).requires_grad_()
    v = torch.randn(B, HKV, Lk, Dv, generator=g).to(torch.bfloat16).requires_grad_()
    grad = torch.randn(B, Lq, H, Dv, generator=g).to(torch.bfloat16)
    return q, k, v, grad


def exact(q, k, v, allowed, grad, scale=None):
    """float64 SDPA on the same (bf16-valued) inputs: (output (B, Lq, H, Dv), (dq, dk, dv))."""
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    mask = {"is_causal": True} if allowed is None else {"attn_mask": allowed}
    out = F.scaled_dot_product_attention(q64, k64, v64, enable_gqa=True, scale=scale, **mask).transpose(1, 2)
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
    "case, B, Lq, Lk, scale, Dv",
    [
        ("causal views", 3, 40, 40, None, D),
        ("later views", 2, 17, 45, None, D),
        ("a packed row", 1, 48, 48, None, D),
        ("packed rows, one mask for all", 2, 32, 32, 0.3, D),  # and a scale of the model's own
        ("causal views", 2, 24, 24, None, 8),  # values with a head size of their own (MLA models)
    ],
)
def test_the_products_give_sdpas_attention_and_gradients_within_bf16_rounding(case, B, Lq, Lk, scale, Dv):
    q, k, v, grad = inputs(B, Lq, Lk, Dv=Dv)
    masks = {"later views": view_masks(B, Lq, Lk), "a packed row": packed_row(Lq)}
    masks["packed rows, one mask for all"] = packed_row(Lq)  # (1, 1, Lq, Lk) for B rows
    allowed = masks.get(case)  # causal views: None
    out = matmul_attention.attend(q, k, v, allowed, scale)
    assert out.shape == (B, Lq, H, Dv) and out.dtype == torch.bfloat16
    out.backward(grad)
    want, grads = exact(q, k, v, allowed, grad, scale)
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


def test_fp32_inputs_under_autocast_are_computed_in_bf16_and_get_fp32_gradients():
    q, k, v, grad = inputs(1, 8, 8)
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    assert not matmul_attention.applies(q32, k32, {})  # fp32 keeps SDPA's exact path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert matmul_attention.applies(q32, k32, {})
        out = matmul_attention.attend(q32, k32, v32, None, None)
    out.backward(grad)  # outside autocast, as the loop's backward runs
    bf16 = matmul_attention.attend(q, k, v, None, None)
    bf16.backward(grad)
    assert out.dtype == torch.bfloat16 and torch.equal(out, bf16)
    for x32, x in zip((q32, k32, v32), (q, k, v), strict=True):
        assert x32.grad.dtype == torch.float32 and torch.equal(x32.grad, x.grad.float())


def test_it_is_left_out_where_sdpa_must_compute(monkeypatch):
    q, k, _, _ = inputs(2, 8, 8)
    assert matmul_attention.applies(q, k, {"dropout": 0.0, "scaling": 0.25})
    assert not matmul_attention.applies(q, k, {"dropout": 0.1})  # attention dropout
    assert not matmul_attention.applies(q, k, {"softcap": 30.0})  # something else in the scores
    assert not matmul_attention.applies(q[:, :, :1], k, {})  # one query per row: a decoding step
    assert not matmul_attention.applies(q[:, :5], k, {})  # 5 query heads on 2 key/value heads
    monkeypatch.setattr(matmul_attention, "MAX_SCORES", 2 * H * 8 * 8 - 1)
    assert not matmul_attention.applies(q, k, {})  # the probabilities it would keep are too many
