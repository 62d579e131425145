"""Pinned losses: each stage's CLI on the 2-layer tiny model, its first losses and gradient norms fixed to 4 decimals.

A refactor that changes what a stage computes (layout, masking, loss reduction, data order) moves
these numbers; one that only moves code does not. When a change is *meant* to alter them, say so
in its commit and re-pin. The values were recorded on the code before the layout refactor (issue 19).
"""

import json

import pytest
from conftest import write_jsonl

PAIRS = [
    {"prompt": "cat", "completion": "chat"},
    {"prompt": "the dog", "completion": "le chien"},
    {"prompt": "a house by the sea", "completion": "une maison au bord de la mer"},
    {"prompt": "bread", "completion": "pain"},
    {"prompt": "water, please", "completion": "de l'eau, s'il vous plait"},
    {"prompt": "book", "completion": "livre"},
    {"prompt": "the tree in the garden", "completion": "l'arbre dans le jardin"},
    {"prompt": "car", "completion": "voiture"},
]
TEXTS = [{"text": "The river runs past the green hills. " * 3}, {"text": "A small bird sings. " * 4}] * 4
PREFS = [
    {"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str((a + b + 3) % 9)}
    for a in range(4)
    for b in range(3)
]
PROMPTS = [{"prompt": p} for p in ["Say something", "Count with me", "What now", "Tell me more"]]

COMMON = ["model=tiny:llama", "train.max_steps=3", "train.warmup=0", "seed=0"]
STAGES = {
    "pretrain": (TEXTS, ["train.max_len=32", "train.batch_size=4", "train.lr=3e-3"]),
    "sft": (PAIRS, ["adapter=lora", "lora.dropout=0", "train.batch_size=4", "train.lr=5e-2"]),
    "rm": (PREFS, ["adapter=none", "train.batch_size=4", "train.lr=1e-3"]),
    # no LoRA dropout: which masks dropout draws depends on the layout's shapes, the losses do not
    "dpo": (
        PREFS,
        ["adapter=lora", "lora.dropout=0", "lora.targets=all-linear", "train.batch_size=4", "train.lr=5e-3"],
    ),
    "rl": (
        PROMPTS,
        [
            "reward=helpers.toy_rewards:digits",
            "rl.group=4",
            "rl.prompts_per_step=2",
            "rollout.max_new_tokens=8",
            "train.lr=5e-3",
            "kl.beta=0.05",
        ],
    ),
}
PINNED = {  # (loss, grad_norm) of the first three optimizer steps
    "pretrain": [(7.2033, 5.6448), (6.1964, 5.7397), (5.4981, 4.9994)],
    "sft": [(6.8085, 2.7875), (6.5505, 3.5727), (5.5259, 3.8985)],
    "rm": [(0.5958, 3.8475), (0.4172, 6.2057), (0.6748, 1.2877)],
    "dpo": [(0.6931, 0.9085), (0.6034, 0.5233), (0.7611, 0.5722)],
    # GRPO: on-policy, the first loss is 0. Repinned 2026-12-01 when sampling moved from torch.multinomial
    # to the inverse CDF (models/generation.draw): other draws from the same distributions
    "rl": [(0.0, 1.717), (0.0008, 1.6281), (0.0041, 1.9141)],
}


def first_steps(cli, tmp_path, stage: str, *more: str) -> list[tuple[float, float]]:
    """(loss, grad_norm) of a CLI run's first three optimizer steps, to 4 decimals."""
    rows, extra = STAGES[stage]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    code, _, err = cli(stage, *COMMON, f"data.train={data}", f"out={tmp_path / 'run'}", *extra, *more)
    assert code == 0, err[-2000:]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(x) for x in lines if '"grad_norm"' in x][:3]
    return [(round(r["loss"], 4), round(r["grad_norm"], 4)) for r in steps]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_first_losses_are_pinned(stage, tmp_path, cli):
    got = first_steps(cli, tmp_path, stage)
    assert got == PINNED[stage], got


@pytest.mark.parametrize("stage", ["pretrain", "sft"])
def test_packing_keeps_the_pinned_losses(stage, tmp_path, cli):
    # data.pack=true changes how each micro-batch is laid out, not which rows it holds: the same
    # first losses and gradient norms as the padded run's pins (dropout is off in both)
    got = first_steps(cli, tmp_path, stage, "data.pack=true")
    assert got == PINNED[stage], got
