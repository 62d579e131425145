"""Kill a run anywhere, resume it, and end exactly where an uninterrupted run ends — for every stage.

Each case runs once uninterrupted (in this process) and once broken: a real process SIGKILLed after a
random step, resumed and SIGKILLed again halfway through writing a checkpoint (the weights file
written, the rest not), resumed and killed after another random step, then resumed to the end. The
kill points are drawn from a seed per case (TUNELAB_TEST_KILL_SEEDS=N runs N plans per case). The
final weights must be bitwise equal and metrics.jsonl equal in every value but the timings (RL:
samples.jsonl too).

The killed runs are forked from a warm process (helpers/zygote.py) that has torch and transformers
imported already: a cold `python -m tunelab` spends ~5 s importing.
"""

import json
import os
import random

import pytest
import torch
from conftest import write_jsonl
from safetensors.torch import load_file
from test_train import PAIRS

STEPS, EVERY = 8, 2  # train.max_steps, train.save_every
TIMINGS = {"tokens_per_s", "step_s", "time_generate_s", "time_score_s"}  # the only values that may differ

PREFS = [
    {"prompt": f"Say {w}", "chosen": f"{w} {w}", "rejected": "no"}
    for w in ["cat", "dog", "house", "tree", "river", "bird", "book", "lamp"]
]
PROMPTS = [{"prompt": p} for p in ["Say something", "Count with me", "What now", "Tell me more"]]
TEXT = [{"text": f"document {i}: the river runs past the green hills"} for i in range(30)]

SFT = ["model.dropout=0.1", "lora.dropout=0.1", "data.eval_split=0.25", "train.eval_every=3"]
RL = [
    "reward=helpers.toy_rewards:digits",
    "rl.group=4",
    "rl.prompts_per_step=2",
    "rollout.max_new_tokens=6",
    "lora.targets=all-linear",
    "kl.beta=0.05",
    "alerts.entropy_drop=0.999",  # alerts that depend on the first step's entropy, which resume must keep
    "train.grad_accum=1",
]
CASES = {  # name: (stage, data rows, overrides)
    "pretrain": ("pretrain", TEXT, ["train.max_len=16", "model.dropout=0.1"]),
    "sft-none": ("sft", PAIRS, ["adapter=none", *SFT]),
    "sft-lora": ("sft", PAIRS, ["adapter=lora", *SFT]),
    "sft-dora": ("sft", PAIRS, ["adapter=dora", *SFT]),
    "sft-prompt": ("sft", PAIRS, ["adapter=prompt", "prompt.tokens=4", *SFT]),
    "sft-prefix": ("sft", PAIRS, ["adapter=prefix", "prompt.tokens=4", *SFT]),
    "rm": ("rm", PREFS, ["adapter=lora", "data.eval_split=0.25", "train.eval_every=3"]),
    "dpo": ("dpo", PREFS, ["adapter=lora", "lora.dropout=0.1", "data.eval_split=0.25", "train.eval_every=3"]),
    "rl-grpo": ("rl", PROMPTS, ["algo=grpo", *RL]),
    # mixed precision: autocast is deterministic, so a resumed bf16 run ends bitwise equal too
    "sft-lora-bf16": ("sft", PAIRS, ["adapter=lora", "train.precision=bf16", *SFT]),
    "rl-grpo-bf16": ("rl", PROMPTS, ["algo=grpo", "train.precision=bf16", *RL]),
    # 3 updates per rollout: checkpoints every 2 steps fall between two updates on the same rollout
    "rl-ppo": ("rl", PROMPTS, ["algo=ppo", "rl.ppo_epochs=3", *RL]),
}


def kill_plan(seed: str) -> list[tuple[str, int]]:
    """[("step", k) | ("save", s), ...]: killed after step k, or while writing checkpoint step-s; each kill
    lies beyond the checkpoint the run resumes from. The last kill is always at or after step STEPS - 1."""
    rng = random.Random(seed)
    plan, resumes_at = [], 0  # the newest complete checkpoint
    for kind in ("step", "save", "step"):
        if kind == "step":
            k = rng.randint(resumes_at + 1, STEPS - 1)
            plan.append(("step", k))
            resumes_at = EVERY * (k // EVERY)  # checkpoint k (if due) is written before the kill
        else:
            s = rng.choice([s for s in range(EVERY, STEPS + 1, EVERY) if s > resumes_at])
            plan.append(("save", s))  # STEPS itself: the checkpoint written at the end
            resumes_at = s - EVERY
    return plan


def final_weights(run):
    final = run / "final"
    name = (
        "adapter_model.safetensors" if (final / "adapter_model.safetensors").exists() else "model.safetensors"
    )
    return load_file(final / name)


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


SEEDS = range(int(os.environ.get("TUNELAB_TEST_KILL_SEEDS", "1")))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_killed_anywhere_then_resumed_equals_uninterrupted(
    tmp_path, case, seed, cli, zygote, one_thread, monkeypatch
):
    monkeypatch.setattr(  # plots are slow here and tested elsewhere; rm adds its own to the folder
        "tunelab.train.lifecycle.make_plots", lambda run_dir: (run_dir / "plots").mkdir(exist_ok=True)
    )
    stage, data, extra = CASES[case]
    path = write_jsonl(tmp_path / "data.jsonl", data)
    argv = [
        stage,
        f"data.train={path}",
        "model=tiny:llama",
        f"train.max_steps={STEPS}",
        "train.batch_size=2",
        "train.grad_accum=2",
        f"train.save_every={EVERY}",
        "train.lr=1e-2",
        *extra,
    ]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert cli(*argv, f"out={whole}")[0] == 0

    plan = kill_plan(f"{case}-{seed}")
    for i, (kind, at) in enumerate(plan):
        log = tmp_path / f"kill-{i}.log"
        status = zygote.run(
            [*argv, f"out={broken}"],
            log,
            kill_at_step=at if kind == "step" else None,
            kill_in_save=at if kind == "save" else None,
        )
        assert status == -9, (plan, i, log.read_text()[-3000:])
        assert not (broken / "final").exists()
        if kind == "save":  # half-written and left behind: weights there, the loop state not
            half = broken / "checkpoints" / f"step-{at}.tmp"
            assert (half / "trainable.safetensors").is_file() and not (half / "state.json").exists()
    # a kill while appending to metrics.jsonl leaves half a line
    with (broken / "metrics.jsonl").open("a") as f:
        f.write('{"step": 99, "loss": 0.')

    code, _, err = cli(*argv, f"out={broken}")
    assert code == 0, err
    newest = EVERY * (plan[-1][1] // EVERY)  # never the half-written one
    if newest:  # (rich wraps long lines)
        assert f"checkpoints/step-{newest}(step{newest}of{STEPS})" in "".join(err.split())
    else:
        assert "resuming from" not in err

    a, b = final_weights(whole), final_weights(broken)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), (plan, name)
    rows_a, rows_b = rows(whole / "metrics.jsonl"), rows(broken / "metrics.jsonl")
    assert [r["step"] for r in rows_b] == list(range(1, STEPS + 1))  # each step logged once
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert {k: v for k, v in ra.items() if k not in TIMINGS} == {
            k: v for k, v in rb.items() if k not in TIMINGS
        }, (plan, ra["step"])
    if stage == "rl":  # the same completions were sampled, each logged once
        assert (whole / "samples.jsonl").read_text() == (broken / "samples.jsonl").read_text()
