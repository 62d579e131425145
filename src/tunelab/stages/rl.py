"""RL from a reward: maximise E_x E_{y~pi(.|x)} r(x, y) while staying near the starting model.

    tunelab rl configs/rl.yaml algo=grpo reward=exact data.train=prompts.jsonl

A step: sample `rl.group` completions for each of `rl.prompts_per_step` prompts (the rollout source),
score them, compute advantages (GRPO / RLOO group baselines, REINFORCE batch baseline, PPO GAE with
a value head), then one policy-gradient update on the one training loop. The reference for the KL
is the policy with its adapter switched off, or a frozen copy for full fine-tuning.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch import Tensor

from tunelab.config.schema import RLConfig
from tunelab.config.variants import pick
from tunelab.data.read import read_dataset
from tunelab.errors import TunelabError
from tunelab.losses import policy as P
from tunelab.models.forward import layout_logprobs
from tunelab.rl.algos import ALGOS
from tunelab.rl.rewards import build_reward
from tunelab.rl.rollout import RolloutBatch, RolloutSource
from tunelab.stages.common import in_precision, prepare_model, render_options, split_holdout
from tunelab.train.dist import main_process
from tunelab.train.loop import train
from tunelab.train.run_folder import default_run_dir, trained_now


def make_loss_fn(cfg: RLConfig, value_head=None):
    policy_loss = pick(ALGOS, cfg.algo, "algo").policy_loss
    kl_estimate = pick(P.KL_ESTIMATORS, cfg.kl.estimator, "kl.estimator")

    def loss_fn(model, batch: RolloutBatch) -> tuple[Tensor, dict]:
        logp, entropy, values = layout_logprobs(
            model, batch.seqs, cfg.rollout.temperature, value_head
        )  # (K,)
        old_logp = batch.old_logp if batch.old_logp is not None else logp.detach()  # None: on-policy
        loss = policy_loss(logp, old_logp, batch.adv, cfg.rl.clip)  # (K,)
        metrics = {
            "clip_frac": float(P.clip_fraction(logp.detach(), old_logp, cfg.rl.clip).sum()),
            "logp_mismatch": float((logp.detach() - old_logp).abs().sum()),  # this forward vs the old one
        }
        if batch.sampler_logp is not None:  # vLLM or bf16 decoding: the trainer's and the sampler's differ
            metrics[f"{batch.sampler}_logp_mismatch"] = float((old_logp - batch.sampler_logp).abs().sum())
            if cfg.rollout.tis_cap:  # truncated importance sampling: pi_trainer / pi_sampler, capped
                weight = P.truncated_is_weights(old_logp, batch.sampler_logp, cfg.rollout.tis_cap)
                loss = loss * weight
                metrics["tis_weight"] = float(weight.sum())
        if batch.ref_logp is not None and cfg.kl.mode == "loss" and cfg.kl.beta:
            loss = loss + cfg.kl.beta * kl_estimate(logp, batch.ref_logp)
        if values is not None:
            v_loss = P.value_loss(values, batch.old_values, batch.returns, cfg.rl.clip)
            loss = loss + cfg.rl.vf_coef * v_loss
            metrics["value_loss"] = float(v_loss.detach().sum())
        return loss.sum(), metrics  # a sum over completion tokens: the loop divides by the global count

    return loss_fn


def reference(model, cfg: RLConfig):
    """Reference log-probs: the adapter switched off (no second copy), or a frozen copy of the full model."""
    if cfg.adapter != "none":

        def ref_logp(seqs):
            with model.disable_adapter():
                return layout_logprobs(model, seqs, cfg.rollout.temperature)[0]

        return ref_logp
    frozen = copy.deepcopy(model).eval().requires_grad_(False)

    def frozen_logp(seqs):
        frozen.to(seqs.input_ids.device)  # follows the policy onto its device (a no-op once there)
        return layout_logprobs(frozen, seqs, cfg.rollout.temperature)[0]

    return frozen_logp


@in_precision
def main(cfg: RLConfig) -> Path:
    if not cfg.data.train:
        raise TunelabError(
            "rl needs prompts: set data.train=PATH (rows with `prompt`, and `answer` for verifiable rewards)."
        )
    if cfg.adapter in ("prompt", "prefix"):
        raise TunelabError("rl trains with adapter=none, lora or dora.")
    if cfg.rollout.backend == "vllm":
        from tunelab.rl.vllm_backend import check_available

        check_available(cfg)  # before any model loads
    algo = pick(ALGOS, cfg.algo, "algo")
    pick(P.KL_ESTIMATORS, cfg.kl.estimator, "kl.estimator")
    rows = read_dataset(cfg.data.train, "prompts")
    held_rows = read_dataset(cfg.data.eval, "prompts") if cfg.data.eval else []
    if not held_rows:
        rows, held_rows = split_holdout(rows, cfg.data.eval_split, cfg.seed)
    reward = build_reward(cfg.reward)
    gate_reward_models(reward, cfg)
    if algo.needs_group and cfg.rl.group < 2:
        raise TunelabError(f"algo={cfg.algo} compares samples of the same prompt: set rl.group >= 2.")
    model, tok = prepare_model(cfg)
    value_head = None
    if algo.critic:
        torch.manual_seed(cfg.seed)
        value_head = torch.nn.Linear(model.config.hidden_size, 1)
        torch.nn.init.zeros_(value_head.weight)  # values start at 0: early advantages are the plain returns
        torch.nn.init.zeros_(value_head.bias)
        model.v_head = value_head  # a submodule: the optimizer and the checkpoints see it
    ref = reference(model, cfg)  # always: the KL is logged even when beta is 0
    run_dir = Path(cfg.out) if cfg.out else default_run_dir("rl")
    cfg.out = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    source = RolloutSource(
        model,
        tok,
        rows,
        reward,
        cfg,
        ref=ref,
        value_head=value_head,
        samples_path=run_dir / "samples.jsonl",
        opts=render_options(cfg),
    )
    evaluator = hacking_watch(cfg, held_rows, reward, tok)
    if evaluator is not None:
        source.hacking = evaluator.watch
    if cfg.rollout.backend == "vllm":
        from tunelab.rl.vllm_backend import VLLMSampler

        source.sampler = VLLMSampler(cfg, tok, run_dir, source.eos_ids)
    report = {
        "prompts": len(rows),
        "reward": str(cfg.reward),
        "algo": cfg.algo,
        "kl": f"beta {cfg.kl.beta}, {cfg.kl.mode}, estimator {cfg.kl.estimator}",
        "step": f"{cfg.rl.prompts_per_step} prompts x {cfg.rl.group} completions, up to {cfg.rollout.max_new_tokens} new tokens",
    }
    started = time.time()
    run = train(
        model,
        tok,
        source,
        make_loss_fn(cfg, value_head),
        cfg,
        stage="rl",
        evaluators=[evaluator] if evaluator is not None else None,
        report=report,
        unit="completion tokens",
    )
    if main_process() and trained_now(run, started):
        _append_rl_report(run, source)
    return run


def gate_reward_models(reward, cfg: RLConfig) -> None:
    """Every reward=rm: model passes its quality gate first (a warning, or refused under rm_gate.strict)."""
    from tunelab.models.rm_gate import check_before_use

    for name, _, fn in reward.sources:
        if name.startswith("rm:"):
            check_before_use(name[3:], strict=cfg.rm_gate.strict, use="reward=rm: in RL", scorer=fn.scorer)


def hacking_watch(cfg: RLConfig, held_rows: list[dict], reward, tok):
    """The held-out measure the watch compares the reward with (rl/watch.py), or None (with a warning
    when the reward is a learnt model) when there are no held-out prompts or nothing to score them by."""
    import sys

    from tunelab.rl.watch import HackingWatch, HeldOutMeasure

    learnt = any(name.startswith("rm:") for name, _, _ in reward.sources)
    metric = cfg.watch.metric
    if metric is None and held_rows and all("answer" in r or "reference" in r for r in held_rows):
        metric = "exact"
    if not held_rows or metric is None:
        if learnt:
            print(
                "warning: reward hacking is not watched: give held-out prompts (data.eval or data.eval_split) "
                "and watch.metric (a task metric, or rm:OTHER as a second judge).",
                file=sys.stderr,
            )
        return None
    if not cfg.train.eval_every:
        raise TunelabError(
            "The hacking watch measures held-out prompts every train.eval_every steps: set it."
        )
    if cfg.alerts.on_hacking == "rollback" or cfg.watch.final_by == "heldout":
        # the loop's early stopping keeps the best model by the measure in best/ and makes it final/;
        # a patience this long never stops the run by itself
        es = cfg.train.early_stop
        es.metric, es.mode, es.patience = "eval_heldout", "max", 10**9
    watch = HackingWatch(cfg.alerts.hacking_window, cfg.alerts.hacking_level, cfg.alerts.on_hacking)
    return HeldOutMeasure(
        watch,
        held_rows[: cfg.watch.n_prompts],
        build_reward(metric),
        tok,
        render_options(cfg),
        cfg.watch.max_new_tokens or cfg.rollout.max_new_tokens,
        cfg.rl.ppo_epochs / cfg.train.grad_accum,
    )


def _append_rl_report(run: Path, source: RolloutSource) -> None:
    import json

    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    lines = ["", "## RL", ""]
    if rows:
        k = max(1, len(rows) // 4)
        first, last = rows[:k], rows[-k:]
        mean = lambda rs, key: sum(r.get(key, 0.0) or 0.0 for r in rs) / len(rs)  # noqa: E731
        lines.append(
            f"- mean reward: {mean(first, 'reward'):.3f} (first {k} steps) -> {mean(last, 'reward'):.3f} (last {k})"
        )
        lines.append(
            f"- KL to reference: {mean(last, 'kl'):.4f}, entropy {mean(last, 'entropy'):.3f}, "
            f"completion length {mean(last, 'completion_len'):.1f} tokens (last {k} steps)"
        )
        cut = 1 - mean(rows, "stopped_share")
        lines.append(
            f"- completions that hit rollout.max_new_tokens without an EOS: {100 * cut:.0f}%"
            + (" (raise max_new_tokens, or the model never learnt to stop)" if cut > 0.5 else "")
        )
        t = {key: mean(rows, key) for key in ("time_generate_s", "time_score_s", "step_s")}
        lines.append(
            f"- time per step: {t['step_s']:.2f} s = generate {t['time_generate_s']:.2f} + score "
            f"{t['time_score_s']:.2f} + train {t['step_s'] - t['time_generate_s'] - t['time_score_s']:.2f}"
        )
    watch = source.hacking
    if watch is not None and watch.history:
        best = max(watch.history, key=lambda h: h["heldout"])
        lines.append(
            f"- held-out measure: {watch.history[0]['heldout']:.3f} (step {watch.history[0]['step']}) -> "
            f"{watch.history[-1]['heldout']:.3f} (step {watch.history[-1]['step']}), best {best['heldout']:.3f} "
            f"at step {best['step']}; hacking watch "
            + (f"FIRED at step {watch.fired_at} (action {watch.action})" if watch.fired_at else "quiet")
        )
    alerts = source.alerts + (watch.alerts if watch is not None else [])
    lines += [f"- alerts: {len(alerts)}"] + [f"  - {a['text']}" for a in alerts[:10]]
    lines.append("- samples: `samples.jsonl` (prompt, completion, reward)")
    with (run / "report.md").open("a") as f:
        f.write("\n".join(lines) + "\n")
