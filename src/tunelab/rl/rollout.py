"""Rollouts as a batch generator: sample G completions per prompt with the current policy, score
them, and hand the training loop a batch with everything the policy loss needs.

    source = RolloutSource(policy, tok, prompt_rows, reward, cfg, ref=...)
    for batch in source.epoch(0): ...        # one RolloutBatch per optimizer step (x ppo_epochs)

The reward lands on each completion's last generated token (its EOS when it stopped), never on
padding: padding after EOS is not a completion token at all.

Under N processes (`source.shard(dist)`) each rank samples the completions of its share of a step's
prompts: a prompt's whole group stays on one rank, so GRPO / RLOO baselines need no communication.
The rewards of all ranks are gathered for the step's reward statistics.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from tunelab.data.layout import Layout, Segment, lay_out
from tunelab.data.render import RenderOptions, prompt_text
from tunelab.losses import policy as P
from tunelab.models import precision
from tunelab.models.adapters import lora_merged
from tunelab.models.capability import attends_per_view, takes_4d_mask
from tunelab.models.forward import layout_logprobs, logprobs_of
from tunelab.models.generation import cache_works, decode_dropping_finished, drops_finished_rows, left_padded
from tunelab.rl.algos import ALGOS
from tunelab.rl.watch import copy_share
from tunelab.train.dist import SINGLE


@dataclass
class RolloutBatch:
    seqs: Layout  # each prompt with its G completions (data/layout.py); targets: the completion tokens
    seq: Tensor  # (K,) completion of each completion token (= seqs.target_seq), completion by completion
    old_logp: Tensor | None  # (K,) log-probs of the policy that sampled; None: the loss's own forward
    # gives them (on-policy: one update per rollout, so the policy has not moved since it sampled)
    ref_logp: Tensor | None  # (K,) reference model (adapter off / frozen copy)
    adv: Tensor  # (K,) advantage of each token
    returns: Tensor | None  # (K,) PPO value targets
    old_values: Tensor | None  # (K,) PPO values at sampling time
    rewards: Tensor  # (N,) total reward per completion
    stats: dict = field(default_factory=dict)  # already averaged: logged as they are
    sampler_logp: Tensor | None = None  # (K,) the sampler's own log-probs where they are not the trainer's
    # (vLLM, or decoding in bf16 / fp16): they weigh tokens (rollout.tis_cap) and are compared, never the ratio
    sampler: str = "sampler"  # whose they are, in the logged `<sampler>_logp_mismatch`: vllm | sampler

    @property
    def n_targets(self) -> int:
        """The loop averages the policy loss over completion tokens."""
        return int(self.seq.shape[0])


@dataclass
class Sampled:
    """What sampling gave: the rows and their layout, and the sampler's own log-probs."""

    sequences: Tensor  # (N, P + C) left-padded prompt, then the completion, then padding
    attention_mask: Tensor  # (N, P + C) 1 on prompt and completion tokens
    completion_mask: Tensor  # (N, P + C) bool: completion tokens, EOS included
    prompt_len: int  # P: the column where every completion starts
    gen_out: object  # HF: ((N, C) log-prob, (N, C) entropy); vLLM: its (N, C) log-probs
    lengths: list[int]  # completion tokens of each row
    stopped: list[bool]  # whether each completion ended with an EOS
    completions: list[str]  # decoded, cut at a stop string
    time_s: float


@dataclass
class Scored:
    examples: list[dict]  # (N,) each prompt's example repeated G times
    parts: dict[str, list[float]]  # each reward part's values (N,)
    rewards: Tensor  # (N,) total reward per completion
    time_s: float


def first_stop(row: list[int], eos_ids: set[int]) -> int | None:
    """Index of the first EOS (any of several ids) in a completion, or None."""
    for i, t in enumerate(row):
        if t in eos_ids:
            return i
    return None


def completion_layout(
    sequences: Tensor, prompt_len: int, prompt_mask: Tensor, eos_ids: set[int], pad_id: int
):
    """(attention_mask, completion_mask, lengths, stopped) for generated `sequences` (N, P + C).

    A completion ends at its first EOS (kept: the model learns to stop) or at the length limit;
    everything after is padding and carries neither attention nor reward.
    """
    N, T = sequences.shape
    completion_mask = torch.zeros((N, T), dtype=torch.bool)
    lengths, stopped = [], []
    for i in range(N):
        row = sequences[i, prompt_len:].tolist()
        stop = first_stop(row, eos_ids)
        n = stop + 1 if stop is not None else len(row)
        completion_mask[i, prompt_len : prompt_len + n] = True
        lengths.append(n)
        stopped.append(stop is not None)
    attention_mask = torch.cat([prompt_mask.bool(), completion_mask[:, prompt_len:]], dim=1).long()
    return attention_mask, completion_mask, lengths, stopped


def token_rewards(rewards: Tensor, seq: Tensor) -> Tensor:
    """(K,) zeros except each sequence's last completion token, which holds its reward."""
    out = torch.zeros(seq.shape[0], dtype=torch.float32)
    last = torch.ones(seq.shape[0], dtype=torch.bool)
    last[:-1] = seq[1:] != seq[:-1]
    out[last] = rewards[seq[last]].float()
    return out


class RolloutSource:
    """Prompts in a seeded order, `prompts_per_step` x `group` completions per step."""

    def __init__(
        self,
        policy,
        tok,
        rows: list[dict],
        reward,
        cfg,
        *,
        ref=None,
        value_head=None,
        samples_path: Path | None = None,
        opts: RenderOptions | None = None,
        sampler=None,
    ):
        self.policy, self.tok, self.rows, self.reward, self.cfg = policy, tok, rows, reward, cfg
        self.ref, self.value_head, self.samples_path = ref, value_head, samples_path
        self.sampler = sampler  # None: HF generate; else a vLLM sampler (rl/vllm_backend.py)
        self.opts = opts or RenderOptions()
        self.per_step = cfg.rl.prompts_per_step
        self.micro_batches_per_epoch = math.ceil(len(rows) / self.per_step) * cfg.rl.ppo_epochs
        eos = tok.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | set(cfg.rollout.extra_eos_ids)
        self.first: dict[str, float] = {}
        self.alerts: list[dict] = []
        self.samples_written = 0
        self.buffer: tuple[tuple[int, int], RolloutBatch] | None = None  # (epoch, step), its rollout
        self.dist = SINGLE
        self.hacking = None  # a HackingWatch (rl/watch.py) sees every rollout's statistics

    def state_dict(self) -> dict:
        """What an exact resume needs besides the data position, which the loop keeps: the alerts' baseline
        and record, how much of samples.jsonl belongs to the checkpoint, and (rl.ppo_epochs > 1) the
        rollout being reused, which cannot be sampled again: the policy has moved since."""
        return {
            "first": self.first,
            "alerts": self.alerts,
            "samples_written": self.samples_written,
            "buffer": self.buffer,
            "hacking": self.hacking.state_dict() if self.hacking is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.first, self.alerts, self.buffer = state["first"], state["alerts"], state["buffer"]
        self.samples_written = state["samples_written"]
        if self.hacking is not None and state.get("hacking") is not None:
            self.hacking.load_state_dict(state["hacking"])
        if self.samples_path is not None and self.dist.is_main and self.samples_path.exists():
            # bytes split at b"\n": a completion may hold U+2028, which str.splitlines() would split at
            kept = self.samples_path.read_bytes().split(b"\n")[: self.samples_written]
            self.samples_path.write_bytes(b"".join(line + b"\n" for line in kept))  # later steps' go

    def shard(self, dist) -> RolloutSource:
        """Each rank takes its share of every step's prompts (groups are never split between ranks)."""
        if self.per_step % dist.world:
            from tunelab.errors import TunelabError

            raise TunelabError(
                f"rl.prompts_per_step={self.per_step} must be a multiple of the {dist.world} processes "
                "(each takes whole prompts with their groups)."
            )
        self.dist = dist
        steps = len(self.rows) // self.per_step + (len(self.rows) % self.per_step >= dist.world)
        self.micro_batches_per_epoch = steps * self.cfg.rl.ppo_epochs
        return self

    def epoch(self, epoch: int, start: int = 0) -> Iterator[RolloutBatch]:
        order = list(range(len(self.rows)))
        random.Random(self.cfg.seed * 1_000_003 + epoch).shuffle(order)
        ppo_epochs = self.cfg.rl.ppo_epochs
        n_steps = math.ceil(len(order) / self.per_step)
        for step in range(start // ppo_epochs, n_steps):
            examples = [self.rows[i] for i in order[step * self.per_step : (step + 1) * self.per_step]]
            if len(examples) < self.dist.world:  # a last, short step that cannot give every rank a prompt
                break
            examples = examples[slice(*self.dist.share(len(examples)))]
            seed = self.cfg.seed * 1_000_003 + epoch * 100_003 + step + 7_777_777 * self.dist.rank
            if self.buffer is not None and self.buffer[0] == (epoch, step):
                batch = self.buffer[1]  # resumed between two updates on this rollout
            else:
                batch = self.make_batch(examples, seed=seed)
            self.buffer = ((epoch, step), batch) if ppo_epochs > 1 else None
            for repeat in range(ppo_epochs):
                if step * ppo_epochs + repeat >= start:
                    yield batch

    def generate_hf(self, examples: list[dict], seed: int):
        """(sequences (N, P + C), prompt_mask (N, P), (log-prob, entropy) of each generated position under
        the sampling distribution softmax(raw logits / temperature), (N, C) each)."""
        cfg, tok, G = self.cfg, self.tok, self.cfg.rl.group
        texts = [prompt_text(tok, e["prompt"], self.opts) for e in examples]
        enc = left_padded(tok, texts).to(self.policy.device)  # one row per prompt
        temperature = cfg.rollout.temperature
        synced = self.dist.sharded and self.dist.world > 1  # FSDP: every rank runs every forward
        with (
            torch.random.fork_rng(devices=[]),
            lora_merged(self.policy),
            precision.linears_prepacked(self.policy),
        ):
            torch.manual_seed(seed)
            if not cfg.rollout.stop and not synced and drops_finished_rows(self.policy):
                # each prompt's forward is run once for its G completions, and completions that stopped
                # leave the batch (generate computes them to the end): see decode_dropping_finished;
                # log-probs and entropies come per step, not as (N, C, V) logits
                new, logp, entropy = decode_dropping_finished(
                    self.policy,
                    enc,
                    cfg.rollout.max_new_tokens,
                    self.eos_ids,
                    tok.pad_token_id,
                    temperature,
                    cfg.rollout.top_p,
                    repeats=G,
                )
                enc = {k: v.repeat_interleave(G, dim=0) for k, v in enc.items()}  # (N, P)
                sequences = torch.cat([enc["input_ids"], new], dim=1)
            else:  # stop strings, prompt tuning (no cache), FSDP, or logit options only generate applies
                enc = {k: v.repeat_interleave(G, dim=0) for k, v in enc.items()}  # (N, P)
                out = self.policy.generate(
                    **enc,
                    do_sample=True,
                    temperature=temperature,
                    top_p=cfg.rollout.top_p,
                    top_k=None,
                    max_new_tokens=cfg.rollout.max_new_tokens,
                    eos_token_id=sorted(self.eos_ids),
                    pad_token_id=tok.pad_token_id,
                    stop_strings=cfg.rollout.stop or None,
                    tokenizer=tok if cfg.rollout.stop else None,
                    return_dict_in_generate=True,
                    output_logits=True,
                    use_cache=cache_works(self.policy),
                    synced_gpus=synced,
                )
                sequences = out.sequences
                new = sequences[:, enc["input_ids"].shape[1] :]  # (N, C)
                logp, entropy = logprobs_of(torch.stack(out.logits, dim=1), new, temperature, entropy=True)
        # the batch is assembled on the CPU; the loop moves it to the training device
        return sequences.cpu(), enc["attention_mask"].cpu(), (logp.cpu(), entropy.cpu())

    def generate_vllm(self, examples: list[dict], seed: int):
        """(sequences (N, P + C), prompt_mask (N, P), vLLM's log-prob of each generated token (N, C))."""
        from tunelab.rl.vllm_backend import layout

        tok, G = self.tok, self.cfg.rl.group
        prompts = [tok(prompt_text(tok, e["prompt"], self.opts))["input_ids"] for e in examples]
        completions = self.sampler.sample(prompts, G, seed, self.policy)
        return layout(prompts, completions, G, tok.pad_token_id)

    @torch.no_grad()
    def make_batch(self, examples: list[dict], seed: int) -> RolloutBatch:
        """One step's rollout: sample G completions per prompt, score them, lay them out for the loss.
        Every forward computes in the run's precision (models/precision.py)."""
        self.policy.eval()
        with precision.compute(), precision.weights_cast_once(self.policy):
            sampled = self.sample(examples, seed)
            scored = self.score(examples, sampled.completions)
            batch = self.to_batch(sampled, scored)
        self.policy.train()
        self.watch(batch.stats)
        if self.hacking is not None:
            self.hacking.record_step(batch.stats)
        self.write_samples(scored.examples, sampled.completions, batch.rewards.tolist())
        return batch

    def sample(self, examples: list[dict], seed: int) -> Sampled:
        """G completions of each prompt (rows of a prompt consecutive), cut at their first EOS."""
        t0 = time.perf_counter()
        if self.sampler is None:
            sequences, prompt_mask, gen_out = self.generate_hf(examples, seed)
        else:
            sequences, prompt_mask, gen_out = self.generate_vllm(examples, seed)
        prompt_len = prompt_mask.shape[1]
        attention_mask, completion_mask, lengths, stopped = completion_layout(
            sequences, prompt_len, prompt_mask, self.eos_ids, self.tok.pad_token_id
        )
        completions = [
            self.tok.decode(sequences[i, prompt_len : prompt_len + n], skip_special_tokens=True)
            for i, n in enumerate(lengths)
        ]
        for stop in self.cfg.rollout.stop:  # the text ends where a stop string begins
            completions = [c.split(stop)[0] for c in completions]
        return Sampled(
            sequences,
            attention_mask,
            completion_mask,
            prompt_len,
            gen_out,
            lengths,
            stopped,
            completions,
            time.perf_counter() - t0,
        )

    def score(self, examples: list[dict], completions: list[str]) -> Scored:
        """The reward of every completion (each example repeated G times, as the completions are)."""
        t0 = time.perf_counter()
        repeated = [e for e in examples for _ in range(self.cfg.rl.group)]
        parts = self.reward.parts(repeated, completions)
        rewards = torch.tensor(self.reward.total(parts), dtype=torch.float32)  # (N,)
        return Scored(repeated, parts, rewards, time.perf_counter() - t0)

    def to_batch(self, sampled: Sampled, scored: Scored) -> RolloutBatch:
        """Old, reference (and PPO's value) log-probs, advantages and the step's statistics."""
        cfg = self.cfg
        seqs = self.lay_out(sampled)
        seq = seqs.target_seq  # (K,)
        generated = sampled.completion_mask[:, sampled.prompt_len :]  # (N, C)
        on_device = seqs.to(self.policy.device)
        sampler_logp, sampler = None, "sampler" if self.sampler is None else "vllm"
        if self.sampler is None and not precision.current().mixed:
            # fp32: the sampling distribution's log-probs come with sampling (raw logits / temperature)
            gen_logp, gen_entropy = sampled.gen_out  # (N, C) each
            old_logp, entropy = gen_logp[generated], gen_entropy[generated]  # (K,)
        else:  # vLLM, or HF decoding in bf16 / fp16 (cached, other batch shapes: other rounding): the
            # trainer's own log-probs are the old ones; the sampler's only weigh tokens and get logged
            gen = sampled.gen_out if self.sampler is not None else sampled.gen_out[0]
            sampler_logp = gen[generated]  # (K,)
            if self.on_policy():  # the loss's forward gives the trainer's log-probs: one forward fewer
                old_logp, entropy = None, sampled.gen_out[1][generated]  # a statistic: the sampler's
            else:  # the trainer's log-probs are needed before the update
                logp, ent, _ = layout_logprobs(self.policy, on_device, cfg.rollout.temperature, entropy=True)
                old_logp, entropy = logp.cpu(), ent.cpu()
        old_values = None
        if self.value_head is not None:  # PPO: values at sampling time
            old_values = layout_logprobs(self.policy, on_device, cfg.rollout.temperature, self.value_head)[2]
            old_values = old_values.cpu()
        ref_logp = self.ref(on_device).cpu() if self.ref is not None else None
        logp = old_logp if old_logp is not None else sampler_logp  # the rollout's statistics read these
        kl_tok = P.kl_k1(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
        adv, returns = self.advantages(scored.rewards, seq, kl_tok, old_values)
        stats = self.step_stats(sampled, scored, logp, ref_logp, entropy)
        return RolloutBatch(
            seqs,
            seq,
            old_logp,
            ref_logp,
            adv,
            returns,
            old_values,
            scored.rewards,
            stats,
            sampler_logp,
            sampler,
        )

    def on_policy(self) -> bool:
        """Whether the loss's forward may stand for the trainer's log-probs at sampling time: one update per
        rollout (the policy moves only after every micro-batch of the step has been sampled), nothing that
        needs them before the loss (a KL in the reward, PPO's values), and HF decoding (it gives the
        entropies the statistics read; vLLM does not)."""
        cfg = self.cfg
        alone = self.sampler is None  # vLLM gives no entropy, which the statistics and alerts read
        return alone and cfg.rl.ppo_epochs == 1 and cfg.kl.mode != "reward" and self.value_head is None

    def lay_out(self, sampled: Sampled) -> Layout:
        """Each prompt (without its left padding) and its G completions (to their EOS) as one segment,
        packed when the policy takes a 4-D mask (every prompt then runs once for its group), else padded."""
        G, P = self.cfg.rl.group, sampled.prompt_len
        ids, prompt_mask = sampled.sequences, sampled.attention_mask[:, :P].bool()
        segments = [
            Segment(
                ids[g, :P][prompt_mask[g]].tolist(),
                [ids[i, P : P + sampled.lengths[i]].tolist() for i in range(g, g + G)],
            )
            for g in range(0, ids.shape[0], G)
        ]
        packed, views = takes_4d_mask(self.policy), attends_per_view(self.policy)
        return lay_out(
            segments, self.tok.pad_token_id, packed=packed, max_len=self.cfg.train.max_len, views=views
        )

    def step_stats(self, sampled: Sampled, scored: Scored, old_logp, ref_logp, entropy) -> dict:
        """The step's statistics: rewards over every rank, KL, entropy, lengths, timings."""
        cfg, G, parts = self.cfg, self.cfg.rl.group, scored.parts
        everyone = torch.tensor(self.dist.gather(scored.rewards.tolist()))  # (N x ranks,) groups stay whole
        kl = P.KL_ESTIMATORS[cfg.kl.estimator](old_logp, ref_logp).mean() if ref_logp is not None else 0.0
        return {
            "reward": float(everyone.mean()),
            "reward_std": float(everyone.std()) if len(everyone) > 1 else 0.0,
            "scored": float(len(everyone)),
            **{f"reward_{name}": sum(v) / len(v) for name, v in parts.items() if len(parts) > 1},
            "kl": float(kl),
            "entropy": float(entropy.mean()),
            "completion_len": sum(sampled.lengths) / len(sampled.lengths),
            "stopped_share": sum(sampled.stopped) / len(sampled.stopped),
            "copy_share": copy_share(scored.examples, sampled.completions),
            "zero_var_groups": P.zero_variance_share(everyone, G) if G > 1 else 0.0,
            "time_generate_s": sampled.time_s,
            "time_score_s": scored.time_s,
        }

    def advantages(self, rewards: Tensor, seq: Tensor, kl_tok: Tensor, values: Tensor | None):
        cfg = self.cfg
        algo = ALGOS[cfg.algo]
        penalty = cfg.kl.beta * kl_tok if cfg.kl.mode == "reward" else torch.zeros_like(kl_tok)
        if algo.critic:  # per-token rewards: -beta * KL on every token, the task reward on the last one
            tok_rewards = token_rewards(rewards, seq) - penalty
            adv, returns = P.gae(tok_rewards, values, seq, cfg.rl.gamma, cfg.rl.lam)
            adv = (adv - adv.mean()) / (adv.std() + 1e-8) if adv.numel() > 1 else adv
            return adv, returns
        seq_rewards = rewards.clone()
        if cfg.kl.mode == "reward":  # the summed KL of each completion comes off its reward
            seq_rewards -= torch.zeros_like(rewards).index_add(0, seq, penalty)
        adv_seq = algo.advantage(seq_rewards, cfg.rl.group)  # (N,)
        return adv_seq[seq], None

    def watch(self, stats: dict) -> None:
        """Alerts for the usual signs of reward hacking: KL explodes, entropy collapses, length runs away."""
        if not self.first:
            self.first = dict(stats)
        checks = [
            ("kl", stats["kl"] > self.cfg.alerts.kl, f"KL {stats['kl']:.3f} > {self.cfg.alerts.kl}"),
            (
                "entropy",
                stats["entropy"] < self.cfg.alerts.entropy_drop * self.first["entropy"],
                f"entropy {stats['entropy']:.3f} fell below {self.cfg.alerts.entropy_drop:g} x its start {self.first['entropy']:.3f}",
            ),
            (
                "length",
                stats["completion_len"] > self.cfg.alerts.length_growth * self.first["completion_len"]
                and stats["stopped_share"] < 0.5,
                f"completions grew to {stats['completion_len']:.1f} tokens (start {self.first['completion_len']:.1f}) and most hit the limit",
            ),
        ]
        for name, fired, text in checks:
            if fired:
                self.alerts.append({"alert": name, "text": text})
        stats["alerts"] = sum(1 for _, fired, _ in checks if fired)

    def write_samples(self, examples: list[dict], completions: list[str], rewards: list[float]) -> None:
        if self.samples_path is None or not self.dist.is_main:  # rank 0's samples stand for the step
            return
        with self.samples_path.open("a") as f:
            kept = list(zip(examples, completions, rewards, strict=True))[: self.cfg.rl.samples_per_step]
            self.samples_written += len(kept)
            for e, c, r in kept:
                f.write(
                    json.dumps(
                        {
                            "prompt": e["prompt"] if isinstance(e["prompt"], str) else str(e["prompt"]),
                            "completion": c,
                            "reward": r,
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
