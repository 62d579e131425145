"""The RL hacking watch: the trend test by hand, scripted signals (fires when the reward rises and the
held-out measure falls, not when both rise), rollback to the best model by the held-out measure, and
an exact resume of the watch's state."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl

from tunelab.config import load_config
from tunelab.config.schema import RLConfig
from tunelab.rl import watch as W

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))


def test_mann_kendall_by_hand():
    # 6 values in order: S = 15 of 15 pairs; one ordering in 6! = 720 has no inversion
    assert W.kendall_s([1, 2, 3, 4, 5, 6]) == 15
    assert W.trend_p([1, 2, 3, 4, 5, 6]) == pytest.approx(1 / 720)
    # one swap: S = 13; orderings with <= 1 inversion: 1 + 5 = 6
    assert W.trend_p([1, 2, 3, 4, 6, 5]) == pytest.approx(6 / 720)
    # <= 2 inversions: 1 + 5 + 14 = 20 -> 0.028 < 0.05; <= 3: 49 / 720 = 0.068 > 0.05
    assert W.trend_p([2, 1, 3, 4, 6, 5]) == pytest.approx(20 / 720)
    assert W.trend_p([3, 1, 2, 4, 6, 5]) == pytest.approx(49 / 720)
    assert W.trend_p([6, 5, 4, 3, 2, 1], direction=-1) == pytest.approx(1 / 720)
    assert W.trend_p([1, 2]) == 1.0  # too few to say anything


def test_the_test_fires_on_reward_up_and_heldout_down_only():
    up, down = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    assert W.hacking_test(up, down, 0.05)["fired"]
    assert not W.hacking_test(up, up, 0.05)["fired"]  # both rise: an honest run
    # one noisy step: flat held-out measure with a single dip at the end is no trend
    assert not W.hacking_test(up, [0.5, 0.5, 0.5, 0.5, 0.5, 0.1], 0.05)["fired"]


def scripted(watch, rewards, heldout):
    """Feed the watch one step per evaluation: the step's reward, then the evaluation's held-out value."""
    rows = []
    for step, (r, h) in enumerate(zip(rewards, heldout, strict=True), 1):
        watch.record_step(
            {"reward": r, "completion_len": 10.0 + step, "kl": 0.0, "entropy": 1.0, "copy_share": 0.0}
        )
        rows.append(watch.evaluate(step, h))
    return rows


def test_the_watch_fires_on_a_scripted_hacking_run_and_not_on_an_honest_one():
    rewards = [0.1 * i for i in range(1, 11)]
    hacked = W.HackingWatch(window=6, level=0.05)
    rows = scripted(hacked, rewards, [0.6, 0.62, 0.61, 0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25])
    # evaluations 1..6 (the first full window): 2 of 15 pairs rise (0.60 -> 0.62, 0.60 -> 0.61), so the
    # held-out measure falls with p = 20/720 = 0.028; the reward rises with p = 1/720
    assert [r["eval_hacking"] for r in rows] == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert rows[5]["eval_p_heldout_down"] == pytest.approx(20 / 720)
    assert hacked.fired_at == 6 and "reward hacking suspected at step 6" in hacked.alerts[0]["text"]
    assert not hacked.stop_requested  # action warn
    assert rows[1]["eval_length_drift"] == pytest.approx(12 / 11)
    honest = W.HackingWatch(window=6, level=0.05, action="stop")
    rows = scripted(honest, rewards, [0.1 * i for i in range(10)])
    assert honest.fired_at is None and not honest.stop_requested and rows[-1]["eval_hacking"] == 0


def test_copying_the_prompt_by_hand():
    prompt = "Write a poem about the sea and the sky at night."
    assert W.copies_prompt(prompt, "Write a poem about the sea and the sky")  # 38 chars, all from the prompt
    assert not W.copies_prompt(prompt, "Waves roll under a dark and starry sky.")
    assert not W.copies_prompt(prompt, "the sea")  # too short to call a copy
    assert W.copy_share([{"prompt": prompt}] * 2, [prompt, "no"]) == 0.5


# ---------------------------------------------------------------- on the tiny model


def rl_cfg(tmp_path, *extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": p} for p in ["Say something", "Count", "What now", "More"]]
    )
    held = write_jsonl(tmp_path / "held.jsonl", [{"prompt": "Tell me"}, {"prompt": "Go on"}])
    return load_config(
        RLConfig,
        None,
        [
            "model=tiny:llama",
            f"data.train={prompts}",
            f"data.eval={held}",
            "rl.group=4",
            "rl.prompts_per_step=2",
            "rollout.max_new_tokens=6",
            "train.lr=5e-3",
            "lora.targets=all-linear",
            "kl.beta=0.0",
            "train.eval_every=1",
            "train.save_every=1",
            "train.keep_last=20",
            f"out={tmp_path / 'run'}",
            *extra,
        ],
    )


def tensor_norms(path: Path) -> list[float]:
    from safetensors.torch import load_file

    return sorted(round(float(t.float().norm()), 5) for t in load_file(path).values())


def test_rollback_ends_at_the_best_model_by_the_held_out_measure(tmp_path, one_thread):
    from helpers import toy_rewards

    from tunelab.stages import rl

    toy_rewards.REWARD_CALLS = toy_rewards.HELD_CALLS = 0
    cfg = rl_cfg(
        tmp_path,
        "reward=helpers.toy_rewards:rising",
        "watch.metric=helpers.toy_rewards:scripted_heldout",
        "alerts.on_hacking=rollback",
        "alerts.hacking_window=4",
        "train.max_steps=10",
    )
    run = rl.main(cfg)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # held-out 0.2 0.4 0.6 0.5 0.4 0.3: evaluations 3..6 fall (p = 1/24 < 0.05) while the reward rises
    assert [r["eval_heldout"] for r in rows] == pytest.approx([0.2, 0.4, 0.6, 0.5, 0.4, 0.3])
    assert rows[-1]["step"] == 6 and rows[-1]["eval_hacking"] == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_early"] and summary["best_step"] == 3 and summary["best"] == pytest.approx(0.6)
    final = tensor_norms(run / "final" / "adapter_model.safetensors")
    assert final == tensor_norms(run / "checkpoints" / "step-3" / "trainable.safetensors")
    assert final != tensor_norms(run / "checkpoints" / "step-6" / "trainable.safetensors")
    assert "FIRED at step 6 (action rollback)" in (run / "report.md").read_text()


def test_resume_keeps_the_watch_state_exact(tmp_path, one_thread):
    from tunelab.stages import rl
    from tunelab.train import loop

    extra = [
        "reward=helpers.toy_rewards:digits",
        "watch.metric=helpers.toy_rewards:digits",
        "train.max_steps=6",
        "alerts.hacking_window=3",
    ]
    whole = rl.main(rl_cfg(tmp_path / "a", *extra))

    class Killed(Exception):
        pass

    def kill(step):
        if step == 3:
            raise Killed

    loop.AFTER_STEP.append(kill)
    try:
        with pytest.raises(Killed):
            rl.main(rl_cfg(tmp_path / "b", *extra))
    finally:
        loop.AFTER_STEP.remove(kill)
    resumed = rl.main(rl_cfg(tmp_path / "b", *extra))

    def read(run):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        state = torch.load(run / "checkpoints" / "step-6" / "source.pt", weights_only=False)["hacking"]
        return [{k: v for k, v in r.items() if k.startswith("eval_") or k == "reward"} for r in rows], state

    rows_a, state_a = read(whole)
    rows_b, state_b = read(resumed)
    assert len(rows_a) == 6 and rows_a == rows_b
    assert state_a == state_b and len(state_a["history"]) == 6
    assert all(math.isfinite(h["heldout"]) for h in state_a["history"])


def test_an_evaluation_without_a_new_rollout_keeps_the_last_statistics():
    # rl.ppo_epochs > 1: two evaluations can see the same rollout; the reward must not drop to 0
    watch = W.HackingWatch(window=3)
    watch.record_step({"reward": 0.7, "completion_len": 5.0, "kl": 0.1, "entropy": 2.0, "copy_share": 0.0})
    watch.evaluate(1, 0.5)
    watch.evaluate(2, 0.5)
    assert [h["reward"] for h in watch.history] == [0.7, 0.7]
