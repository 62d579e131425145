"""Kill a run with SIGKILL mid-way, resume it, and end exactly where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import write_jsonl
from safetensors.torch import load_file
from test_train import PAIRS

DETERMINISTIC = ("step", "loss", "lr", "grad_norm", "tokens", "epoch", "skipped", "eval_loss")


def run_cli(*args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "tunelab", *args], capture_output=True, text=True, env=env)


def final_weights(run):
    final = run / "final"
    name = (
        "adapter_model.safetensors" if (final / "adapter_model.safetensors").exists() else "model.safetensors"
    )
    return load_file(final / name)


@pytest.mark.parametrize("stage, adapter", [("sft", "lora"), ("sft", "none"), ("pretrain", "none")])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, stage, adapter):
    if stage == "sft":
        data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
        extra = [
            f"adapter={adapter}",
            "lora.dropout=0.1",
            "model.dropout=0.1",
            "data.eval_split=0.25",
            "train.eval_every=3",
        ]
    else:
        data = write_jsonl(
            tmp_path / "text.jsonl",
            [{"text": f"document {i}: the river runs past the green hills"} for i in range(30)],
        )
        extra = ["train.max_len=16", "model.dropout=0.1"]
    common = [
        f"data.train={data}",
        "model=tiny:llama",
        "train.max_steps=10",
        "train.batch_size=2",
        "train.grad_accum=2",
        "train.save_every=3",
        "train.lr=1e-2",
        *extra,
    ]

    whole = tmp_path / "whole"
    assert run_cli(stage, *common, f"out={whole}").returncode == 0

    broken = tmp_path / "broken"
    killed = run_cli(stage, *common, f"out={broken}", env_extra={"TUNELAB_FAULT_KILL_AT_STEP": "7"})
    assert killed.returncode == -signal.SIGKILL
    assert not (broken / "final").exists()
    assert sorted(p.name for p in (broken / "checkpoints").iterdir()) == ["step-3", "step-6"]
    (broken / "checkpoints" / "step-9.tmp").mkdir()  # a half-written checkpoint must never be picked up
    resumed = run_cli(stage, *common, f"out={broken}", "resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "step-6" in resumed.stderr

    a, b = final_weights(whole), final_weights(broken)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name
    rows_a = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (broken / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_b] == list(range(1, 11))  # steps 7.. logged once, after the resume
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in DETERMINISTIC:
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], abs=1e-6), (ra["step"], key)
