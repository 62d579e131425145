"""vLLM rollouts: the pure pieces and the rollout path run here with a scripted sampler; the real engine
only on a GPU machine with the vllm extra (skipped otherwise)."""

import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import write_jsonl

from tunelab.config import load_config
from tunelab.config.schema import RLConfig
from tunelab.losses.policy import truncated_is_weights
from tunelab.models.forward import layout_logprobs
from tunelab.rl.rewards import build_reward
from tunelab.rl.rollout import RolloutSource
from tunelab.rl.vllm_backend import Sampled, layout
from tunelab.stages.rl import make_loss_fn


def test_truncated_importance_weights_by_hand():
    # trainer 0.5 vs sampler 0.25 -> ratio 2, capped at 1.5; trainer 0.25 vs sampler 0.5 -> 0.5
    w = truncated_is_weights(torch.log(torch.tensor([0.5, 0.25])), torch.log(torch.tensor([0.25, 0.5])), 1.5)
    assert w.tolist() == pytest.approx([1.5, 0.5])


def test_layout_left_pads_prompts_and_right_pads_completions():
    prompts = [[5, 6], [7]]
    completions = [
        Sampled([1, 2, 0], [-0.1, -0.2, -0.3]),
        Sampled([3], [-0.4]),
        Sampled([4, 0], [-0.5, -0.6]),
        Sampled([], []),
    ]
    sequences, prompt_mask, logp = layout(prompts, completions, group=2, pad_id=9)
    assert sequences.tolist() == [[5, 6, 1, 2, 0], [5, 6, 3, 9, 9], [9, 7, 4, 0, 9], [9, 7, 9, 9, 9]]
    assert prompt_mask.tolist() == [[1, 1], [1, 1], [0, 1], [0, 1]]
    assert logp[0].tolist() == pytest.approx([-0.1, -0.2, -0.3]) and logp[3].tolist() == [0.0, 0.0, 0.0]


class ScriptedSampler:
    """Stands in for vLLM: fixed completions, each token's log-prob -1.0."""

    def __init__(self, completions: list[list[int]]):
        self.completions, self.calls = completions, 0

    def sample(self, prompts, group, seed, policy):
        self.calls += 1
        assert len(prompts) * group == len(self.completions)
        return [Sampled(ids, [-1.0] * len(ids)) for ids in self.completions]


def test_vllm_rollout_path_logs_the_mismatch_and_weighs_tokens(tiny_llama, tmp_path):
    model, tok = tiny_llama
    cfg = load_config(
        RLConfig,
        None,
        ["model=tiny:llama", "rl.group=2", "rl.prompts_per_step=1", "rollout.tis_cap=1.5", "reward=length"],
    )
    eos = tok.eos_token_id
    sampler = ScriptedSampler([[40, 41, eos], [42, 43, 44, 45]])  # one stops at EOS, one hits no EOS
    source = RolloutSource(model, tok, [{"prompt": "hello"}], build_reward(cfg.reward), cfg)
    source.sampler = sampler
    batch = source.make_batch([{"prompt": "hello"}], seed=0)
    assert sampler.calls == 1
    assert torch.bincount(batch.seq).tolist() == [3, 4]  # the EOS is a completion token, padding is not
    with torch.no_grad():
        trainer_logp, _, _ = layout_logprobs(model, batch.seqs)
    assert batch.old_logp.tolist() == pytest.approx(trainer_logp.tolist(), abs=1e-6)  # the trainer's own
    assert batch.sampler == "vllm" and batch.sampler_logp.tolist() == [-1.0] * 7
    assert batch.stats["stopped_share"] == 0.5
    # the loss weighs each token by min(pi_trainer / pi_vllm, cap) and logs the mismatch (sums over tokens)
    loss, metrics = make_loss_fn(cfg)(model, batch)
    assert metrics["vllm_logp_mismatch"] == pytest.approx(float((trainer_logp + 1.0).abs().sum()), abs=1e-5)
    expected = torch.exp(trainer_logp + 1.0).clamp(max=1.5)
    assert metrics["tis_weight"] == pytest.approx(float(expected.sum()), abs=1e-5)
    assert float(loss) == pytest.approx(float(-(batch.adv * expected).sum()), abs=1e-5)  # ratio 1: -A x w


def test_vllm_backend_on_cpu_is_a_clear_error(tmp_path, cli):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    code, _, err = cli("rl", "model=tiny:llama", f"data.train={prompts}", "rollout.backend=vllm")
    assert code == 2 and "Traceback" not in err and "vllm" in err.lower()


GPU = torch.cuda.is_available()


@pytest.mark.skipif(
    not GPU or not __import__("importlib").util.find_spec("vllm"), reason="needs a GPU and vllm"
)
@pytest.mark.parametrize("adapter", ["lora", "none"])
def test_grpo_with_vllm_rollouts_on_a_gpu(tmp_path, adapter):
    prompts = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(8)]
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunelab",
            "rl",
            "model=smollm2-135m",
            f"data.train={prompts}",
            f"adapter={adapter}",
            "rollout.backend=vllm",
            "reward=number",
            "rl.group=4",
            "rl.prompts_per_step=2",
            "train.max_steps=3",
            "rollout.max_new_tokens=16",
            f"out={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(math.isfinite(r["vllm_logp_mismatch"]) for r in rows)
    assert all(r["vllm_logp_mismatch"] < 0.5 for r in rows)  # vLLM samples from (nearly) the trainer's policy
