"""models/forward.target_logprobs: the chunked log-prob of each target equals the plain (N, V) log-softmax,
forward and backward, in fp32 and from bf16 logits."""

import pytest
import torch

from tunelab.models.forward import _chunk_rows, log_softmax, target_logprobs

V = 1 << 16  # 32 rows a chunk: the 70 rows below run as three chunks, the last one short


def reference(logits, row, target, temperature):
    """The plain way, in float64: log_softmax over (N, V), then the (row, target) entries."""
    logp_all = torch.log_softmax(logits.double() / temperature, dim=-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp_all[row, target], entropy[row]


def case(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    N = 70
    logits = (torch.randn(N, V, generator=g) * 3).to(dtype).requires_grad_(True)
    # every row once, and some rows several times (a shared prompt's last position predicts G targets)
    row = torch.cat([torch.arange(N), torch.tensor([0, 0, 33, 69, 69, 69])])
    target = torch.randint(0, V, (len(row),), generator=g)
    weight = torch.randn(len(row), generator=g)  # a loss that weighs each target differently
    return logits, row, target, weight


def test_chunks_are_smaller_than_the_batch():
    assert _chunk_rows(V) == 32  # else the tests below would not cross a chunk boundary


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_forward_and_backward_equal_the_plain_log_softmax_in_fp32(temperature):
    logits, row, target, weight = case(torch.float32)
    logp, entropy = target_logprobs(logits, row, target, temperature, entropy=True)
    (logp * weight).sum().backward()
    grad = logits.grad.clone()

    ref_logits = logits.detach().double().requires_grad_(True)
    ref_logp, ref_entropy = reference(ref_logits, row, target, temperature)
    (ref_logp * weight.double()).sum().backward()

    assert logp.dtype == torch.float32 and not entropy.requires_grad
    torch.testing.assert_close(logp.double(), ref_logp.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy.double(), ref_entropy.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad.double(), ref_logits.grad, rtol=1e-5, atol=1e-7)


def test_from_bf16_logits_it_equals_the_plain_path_on_the_same_bf16_logits():
    """The plain path converts bf16 logits to fp32 and casts the gradient back to bf16 at that
    conversion; here the same, so the two agree within bf16 rounding of the gradient."""
    logits, row, target, weight = case(torch.bfloat16, seed=1)
    logp, _ = target_logprobs(logits, row, target, 0.9)
    (logp * weight).sum().backward()

    plain_logits = logits.detach().clone().requires_grad_(True)
    plain = log_softmax(plain_logits, 0.9)[row, target]
    (plain * weight).sum().backward()

    assert logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logp, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits.grad.float(), plain_logits.grad.float(), rtol=1e-2, atol=1e-6)


def test_a_confident_targets_gradient_keeps_its_digits_in_bf16():
    # p(target) = 1 - 1e-3: d logp / d z_target = 1 - p = 1e-3, which bf16 holds to 3 digits; computed
    # as bf16(1) - bf16(p), it would come out as 0 (bf16(0.999) rounds to 1)
    logits = torch.full((1, 1000), 0.0)
    logits[0, 7] = torch.log(torch.tensor(0.999 * 999 / 0.001))
    logits = logits.bfloat16().requires_grad_(True)
    logp, _ = target_logprobs(logits, torch.tensor([0]), torch.tensor([7]))
    logp.sum().backward()
    p = torch.softmax(logits.detach().double(), -1)[0, 7]
    assert logits.grad[0, 7].item() == pytest.approx(float(1 - p), rel=1e-2)
    assert logits.grad[0, 7].item() > 5e-4
