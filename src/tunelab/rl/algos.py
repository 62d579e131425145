"""The RL algorithms: one record each, read by the stage (policy loss, critic) and the rollout
(advantages). A new algorithm is one line here; `algo=` accepts exactly these names.

    algo = pick(ALGOS, cfg.algo, "algo")
    adv = algo.advantage(rewards, group)          # (N,) per completion (not for a critic: GAE per token)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from tunelab.losses import policy as P


@dataclass(frozen=True)
class Algo:
    policy_loss: Callable[[Tensor, Tensor, Tensor, float], Tensor]  # (logp, old_logp, adv, clip) -> (K,)
    advantage: Callable[[Tensor, int], Tensor] | None  # (rewards (N,), group) -> (N,); None: GAE on values
    needs_group: bool  # compares samples of one prompt: rl.group >= 2
    critic: bool = False  # a value head, trained with the policy; advantages by GAE per token


ALGOS: dict[str, Algo] = {
    "grpo": Algo(P.ppo_clip_loss, P.grpo_advantage, needs_group=True),
    "rloo": Algo(P.reinforce_loss, P.rloo_advantage, needs_group=True),
    "reinforce": Algo(P.reinforce_loss, P.batch_mean_advantage, needs_group=False),
    "ppo": Algo(P.ppo_clip_loss, None, needs_group=False, critic=True),
}
