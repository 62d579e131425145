"""Policy-gradient family: advantages, per-token policy losses, KL estimators, GAE, value loss.

All functions are pure. Shapes: per-sequence tensors are (N,); per-token tensors are flat (K,) over
the completion tokens of all sequences, row-major, with `seq` (K,) giving each token's sequence.
Variants are tables of small functions, picked by name.
"""

from __future__ import annotations

import torch
from torch import Tensor

# ---------------------------------------------------------------- advantages (per sequence)


def grpo_advantage(rewards: Tensor, group: int, eps: float = 1e-4) -> Tensor:
    """(r - mean of its group) / (std of its group + eps); groups are consecutive runs of `group`."""
    r = rewards.view(-1, group)  # (P, G)
    adv = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + eps)
    return adv.reshape(-1)


def rloo_advantage(rewards: Tensor, group: int, eps: float = 0.0) -> Tensor:
    """r minus the mean of the *other* G-1 samples of the same prompt (leave-one-out baseline)."""
    r = rewards.view(-1, group)  # (P, G)
    others = (r.sum(dim=1, keepdim=True) - r) / (group - 1)
    return (r - others).reshape(-1)


def batch_mean_advantage(rewards: Tensor, group: int, eps: float = 0.0) -> Tensor:
    """REINFORCE with the batch's mean reward as baseline (lower variance, same expectation)."""
    return rewards - rewards.mean()


def zero_variance_share(rewards: Tensor, group: int) -> float:
    """Share of groups whose samples all got the same reward (they teach GRPO/RLOO nothing)."""
    r = rewards.view(-1, group)
    return float((r.max(dim=1).values == r.min(dim=1).values).float().mean())


# ---------------------------------------------------------------- policy losses (per token)


def reinforce_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, clip: float) -> Tensor:
    """On-policy: nothing to clip. d/dθ of -logp * A is the policy gradient."""
    return -logp * adv


def ppo_clip_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, clip: float) -> Tensor:
    ratio = (logp - old_logp).exp()
    return -torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)


POLICY_LOSSES = {"reinforce": reinforce_loss, "ppo_clip": ppo_clip_loss}


def truncated_is_weights(train_logp: Tensor, sampler_logp: Tensor, cap: float) -> Tensor:
    """(K,) min(pi_train / pi_sampler, cap): tokens the sampler over-sampled count less, none by more than
    cap. The correction for a sampler whose distribution is slightly off the trainer's (vLLM, bf16)."""
    return torch.exp(train_logp - sampler_logp).clamp(max=cap)


def clip_fraction(logp: Tensor, old_logp: Tensor, clip: float) -> Tensor:
    ratio = (logp - old_logp).exp()
    return ((ratio - 1).abs() > clip).float()


# ---------------------------------------------------------------- KL to the reference (per token)


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """log pi/pi_ref: unbiased, can be negative, high variance."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """(log pi/pi_ref)^2 / 2: biased, low variance, always >= 0."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """pi_ref/pi - 1 - log(pi_ref/pi): unbiased, always >= 0 (Schulman's estimator; GRPO's choice)."""
    log_ratio = ref_logp - logp
    return log_ratio.exp() - 1 - log_ratio


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


# ---------------------------------------------------------------- PPO value side


def gae(
    rewards: Tensor, values: Tensor, seq: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over flat tokens; each sequence's bootstrap after its last token is 0.

    rewards, values, seq: (K,). Returns (advantages, returns), both (K,).
    """
    adv = torch.zeros_like(rewards)
    next_adv = 0.0
    next_value = 0.0
    for k in range(rewards.shape[0] - 1, -1, -1):
        if k == rewards.shape[0] - 1 or seq[k + 1] != seq[k]:  # last token of a sequence
            next_adv, next_value = 0.0, 0.0
        delta = rewards[k] + gamma * next_value - values[k]
        next_adv = delta + gamma * lam * next_adv
        adv[k] = next_adv
        next_value = values[k]
    return adv, adv + values


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip: float) -> Tensor:
    """Clipped value loss (per token): max of the plain and the clipped squared error, halved."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
