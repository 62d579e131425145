"""RL and DPO: losses and advantages by hand, padding / EOS / equal-reward edge cases, and every
algorithm raising a trivially learnable reward on a tiny model."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl

from tunelab.losses import policy as P
from tunelab.losses.preference import dpo_sigmoid_loss, ipo_loss
from tunelab.rl.rewards import build_reward, exact_answer, extract_answer, number_close
from tunelab.rl.rollout import completion_layout, token_rewards

TESTS = Path(__file__).parent


def test_grpo_and_rloo_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0, 5.0, 5.0, 5.0])  # two groups of 4
    # group 1: mean 0.5, sample std sqrt(1/3) -> (1 - 0.5) / 0.57735 = 0.8660
    adv = P.grpo_advantage(rewards, group=4)
    assert adv[:4].tolist() == pytest.approx([0.8660, -0.8660, -0.8660, 0.8660], abs=1e-3)
    assert adv[4:].tolist() == [0.0, 0.0, 0.0, 0.0]  # all-equal rewards: zero advantage, not NaN
    # RLOO: r - mean of the other three. group 1, sample 0: 1 - (0 + 0 + 1) / 3 = 2/3
    rloo = P.rloo_advantage(rewards, group=4)
    assert rloo[:4].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    assert P.zero_variance_share(rewards, 4) == 0.5


def test_policy_losses_by_hand():
    logp, old, adv = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]), torch.tensor([2.0])
    assert P.reinforce_loss(logp, old, adv, 0.2).item() == pytest.approx(-math.log(0.5) * 2)
    # ratio = 0.5 / 0.25 = 2, clipped to 1.2: -min(2 * 2, 1.2 * 2) = -2.4
    assert P.ppo_clip_loss(logp, old, adv, 0.2).item() == pytest.approx(-2.4)
    # negative advantage: -min(2 * -2, 1.2 * -2) = -(-4) = 4 (the pessimistic bound)
    assert P.ppo_clip_loss(logp, old, -adv, 0.2).item() == pytest.approx(4.0)


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    d = math.log(2)  # log pi - log ref
    assert P.kl_k1(logp, ref).item() == pytest.approx(d)
    assert P.kl_k2(logp, ref).item() == pytest.approx(d * d / 2)
    assert P.kl_k3(logp, ref).item() == pytest.approx(0.5 - 1 + d)  # ref/pi - 1 - log(ref/pi)


def test_gae_by_hand():
    # one sequence of 3 tokens, reward 1 on the last, values 0.5 each, gamma 1, lambda 0.5
    # deltas: 0 + 0.5 - 0.5 = 0, 0 + 0.5 - 0.5 = 0, 1 + 0 - 0.5 = 0.5
    # advantages (backwards): 0.5, 0 + 0.5 * 0.5 = 0.25, 0 + 0.5 * 0.25 = 0.125
    adv, ret = P.gae(
        torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0, 0, 0]), 1.0, 0.5
    )
    assert adv.tolist() == pytest.approx([0.125, 0.25, 0.5])
    assert ret.tolist() == pytest.approx([0.625, 0.75, 1.0])
    # two sequences: nothing leaks across the boundary
    adv2, _ = P.gae(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]), torch.tensor([0, 1]), 1.0, 1.0)
    assert adv2.tolist() == [1.0, 2.0]


def test_dpo_and_ipo_losses_by_hand():
    pc, pr, rc, rr = torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0])
    # margin = (-1 + 2) - (-3 + 2) = 2; beta 0.5 -> -log sigmoid(1) = log(1 + e^-1)
    assert dpo_sigmoid_loss(pc, pr, rc, rr, 0.5).item() == pytest.approx(math.log1p(math.exp(-1)))
    # IPO: (2 - 1 / (2 * 0.5))^2 = 1
    assert ipo_loss(pc, pr, rc, rr, 0.5).item() == pytest.approx(1.0)


def test_reward_lands_on_the_last_real_token_never_on_padding():
    # prompt of 2 (left-padded), completions: [5, EOS, pad, pad] and [6, 7, 8, 9] (hit the limit)
    eos, pad = 2, 2  # pad = eos, as in many real models
    seqs = torch.tensor([[0, 11, 5, eos, pad, pad], [12, 13, 6, 7, 8, 9]])
    prompt_mask = torch.tensor([[0, 1], [1, 1]])
    attn, comp, lengths, stopped = completion_layout(seqs, 2, prompt_mask, {eos}, pad)
    assert lengths == [2, 4] and stopped == [True, False]
    assert comp.tolist() == [[False, False, True, True, False, False], [False, False, True, True, True, True]]
    assert attn.tolist() == [[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]
    seq = torch.arange(2)[:, None].expand_as(comp)[comp]  # (K,) = [0, 0, 1, 1, 1, 1]
    assert token_rewards(torch.tensor([3.0, 7.0]), seq).tolist() == [0.0, 3.0, 0.0, 0.0, 0.0, 7.0]


def test_any_of_several_eos_ids_ends_a_completion():
    seqs = torch.tensor([[1, 4, 9, 4], [1, 4, 4, 8]])  # eos ids {8, 9}
    _, comp, lengths, stopped = completion_layout(seqs, 1, torch.tensor([[1], [1]]), {8, 9}, 0)
    assert lengths == [2, 3] and stopped == [True, True]


def test_verifiable_rewards():
    ex = {"prompt": "2+2?", "answer": "4"}
    assert extract_answer("so the answer: 4.") == "4"
    assert exact_answer(ex, "Answer: 4") == 1.0 and exact_answer(ex, "Answer: 5") == 0.0
    assert number_close(ex, "it is 4.0") == 1.0 and number_close(ex, "no number") == 0.0
    combined = build_reward(["exact", {"name": "regex:^Answer", "weight": 0.5}])
    parts = combined.parts([ex, ex], ["Answer: 4", "4"])
    assert parts == {"exact": [1.0, 1.0], "regex:^Answer": [1.0, 0.0]} and combined.total(parts) == [1.5, 1.0]


def run_rl(tmp_path, *extra):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": p} for p in ["Say something", "Count with me", "What now", "Tell me more"]],
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunelab",
            "rl",
            "model=tiny:llama",
            f"data.train={prompts}",
            "reward=helpers.toy_rewards:digits",
            "rl.group=8",
            "rl.prompts_per_step=2",
            "rollout.max_new_tokens=8",
            "train.lr=5e-3",
            "lora.targets=all-linear",
            "kl.beta=0.0",
            f"out={tmp_path / 'run'}",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    return out


@pytest.mark.parametrize("algo, steps", [("grpo", 30), ("rloo", 30), ("reinforce", 30), ("ppo", 30)])
def test_every_algorithm_raises_a_learnable_reward(tmp_path, algo, steps):
    out = run_rl(tmp_path, f"algo={algo}", f"train.max_steps={steps}")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["reward"] for r in rows[:5]) / 5
    last = sum(r["reward"] for r in rows[-5:]) / 5
    assert last > first + 0.05 and last > 2 * first, (algo, first, last)
    for key in (
        "kl",
        "entropy",
        "completion_len",
        "zero_var_groups",
        "time_generate_s",
        "time_score_s",
        "clip_frac",
        "logp_mismatch",
    ):
        assert key in rows[-1], key
    assert rows[-1]["logp_mismatch"] < 1e-3  # generation and the trainer's forward agree
    report = (tmp_path / "run" / "report.md").read_text()
    assert "mean reward:" in report and "generate" in report
    assert (tmp_path / "run" / "samples.jsonl").read_text().count("\n") >= steps


def test_kl_leash_is_logged_and_alerts_fire(tmp_path):
    out = run_rl(
        tmp_path,
        "algo=grpo",
        "train.max_steps=6",
        "kl.beta=0.1",
        "kl.estimator=k2",
        "kl.mode=reward",
        "alerts.kl=0.0001",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # at step 1 the policy is the reference
    assert rows[-1]["kl"] > 0
    assert "KL" in (tmp_path / "run" / "report.md").read_text()


def test_a_failing_reward_function_is_a_clear_error(tmp_path):
    out = run_rl(
        tmp_path,
        "reward=helpers.toy_rewards:broken",
        "rl.group=2",
        "rl.prompts_per_step=1",
        "rollout.max_new_tokens=2",
        "train.max_steps=1",
    )  # later overrides win
    assert (
        out.returncode == 2 and "helpers.toy_rewards:broken" in out.stderr and "Traceback" not in out.stderr
    )


def test_dpo_raises_the_held_out_margin(tmp_path):
    from tunelab.config import load_config
    from tunelab.config.schema import DPOConfig
    from tunelab.stages import dpo

    rows = [
        {"prompt": f"Say {w}", "chosen": f"{w} {w}", "rejected": "no"}
        for w in [
            "cat",
            "dog",
            "house",
            "tree",
            "river",
            "bird",
            "book",
            "lamp",
            "chair",
            "door",
            "fox",
            "sea",
        ]
        * 3
    ]
    data = write_jsonl(tmp_path / "pref.jsonl", rows)
    cfg = load_config(
        DPOConfig,
        None,
        [
            "model=tiny:llama",
            f"data.train={data}",
            f"out={tmp_path / 'run'}",
            "adapter=lora",
            "lora.targets=all-linear",
            "train.max_steps=16",
            "train.batch_size=4",
            "train.lr=5e-3",
            "data.eval_split=0.25",
            "train.eval_every=4",
            "dpo.beta=0.1",
        ],
    )
    run = dpo.main(cfg)
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "eval_margin" in x]
    assert evals[-1]["eval_margin"] > evals[0]["eval_margin"] + 0.5 and evals[-1]["eval_accuracy"] > 0.9


def test_a_reward_module_in_the_current_folder_imports_as_python_m_would(tmp_path, monkeypatch):
    # `reward=my_rewards:politeness` with my_rewards.py next to where the user runs tunelab
    import sys

    from tunelab.rl.rewards import build_reward

    (tmp_path / "my_rewards_here.py").write_text(
        "def politeness(example, completion):\n    return float('please' in completion)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    reward = build_reward("my_rewards_here:politeness")
    assert reward.total(reward.parts([{"prompt": "x"}], ["yes please"])) == [1.0]
