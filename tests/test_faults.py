"""Faults in the middle of a run: each is handled by the guard, or stops the run with a clear message
and leaves the newest complete checkpoint intact, so that `resume=auto` goes on from it.

NaN / inf losses and loss spikes: tests/test_train.py::test_guard_skips_nan_and_spike_then_rolls_back.
"""

import json
import os
import resource
import signal
import time

import pytest
import torch
from conftest import write_jsonl
from helpers.zygote import SLOW_STEP
from test_resume import PROMPTS, final_weights
from test_train import PAIRS

SFT = [
    "sft",
    "model=tiny:llama",
    "adapter=lora",
    "train.max_steps=6",
    "train.save_every=2",
    "train.batch_size=2",
]
RL = [
    "rl",
    "model=tiny:llama",
    "reward=helpers.toy_rewards:faulty",
    "rl.group=2",
    "rl.prompts_per_step=2",
    "rollout.max_new_tokens=4",
    "train.max_steps=6",
    "train.save_every=2",
]


def steps_logged(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def checkpoints(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def one_paragraph(err: str) -> str:
    """The CLI's error, with rich's line wrapping undone."""
    assert "Traceback" not in err
    return " ".join(err.split())


def disk_full_during(write, when):
    """`write`, failing for real when `when(*args)`: the file-size limit is 0 bytes for that one call, so
    the kernel refuses the write (EFBIG, as ENOSPC would) and each library raises its own error type."""

    def limited(*args, **kwargs):
        if not when(*args):
            return write(*args, **kwargs)
        old_signal = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
        old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, old_limit[1]))
        try:
            return write(*args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
            signal.signal(signal.SIGXFSZ, old_signal)

    return limited


@pytest.mark.parametrize("failing", ["checkpoint weights", "checkpoint optimizer", "final model"])
def test_a_full_disk_while_saving_stops_clearly_and_resume_goes_on(
    tmp_path, cli, one_thread, monkeypatch, failing
):
    import tunelab.train.checkpoint as ckpt
    import tunelab.train.run_folder as run_folder

    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert cli(*SFT, f"data.train={data}", f"out={whole}")[0] == 0

    with monkeypatch.context() as patch:
        if failing == "checkpoint weights":  # safetensors raises SafetensorError
            patch.setattr(
                ckpt, "save_file", disk_full_during(ckpt.save_file, lambda t, path: "step-4" in str(path))
            )
        elif failing == "checkpoint optimizer":  # torch.save raises RuntimeError
            patch.setattr(
                torch,
                "save",
                disk_full_during(torch.save, lambda obj, path: str(path).endswith("step-4.tmp/optimizer.pt")),
            )
        else:  # peft's save_pretrained (safetensors again), after the last checkpoint
            patch.setattr(
                run_folder,
                "save_final",
                disk_full_during(run_folder.save_final, lambda m, t, folder, *a: folder.name == "final"),
            )
        code, _, err = cli(*SFT, f"data.train={data}", f"out={broken}")
    message = one_paragraph(err)
    assert code == 2
    newest = "step-6" if failing == "final model" else "step-2"
    what = "the final model" if failing == "final model" else "checkpoint"
    assert f"could not write {what}" in message and "a full disk is the usual cause" in message
    assert ("unexpected pos" if failing == "checkpoint optimizer" else "File too large") in message
    assert f"The newest complete checkpoint is {broken}/checkpoints/{newest}" in message
    assert f"out={broken} resume=auto" in message
    assert checkpoints(broken) == (
        ["step-4", "step-6"] if failing == "final model" else ["step-2"]
    )  # no .tmp
    assert not (broken / "final").exists() and not (broken / "final.tmp").exists()
    newest_state = (broken / "checkpoints" / newest / "state.json").stat()

    code, _, err = cli(*SFT, f"data.train={data}", f"out={broken}")
    assert code == 0, err
    assert f"checkpoints/{newest}" in "".join(err.split())
    assert steps_logged(broken) == [1, 2, 3, 4, 5, 6]
    a, b = final_weights(whole), final_weights(broken)
    assert all(torch.equal(a[name], b[name]) for name in a)
    if failing == "final model":  # resumed at the last step: the checkpoint is not written again
        assert (broken / "checkpoints" / newest / "state.json").stat().st_mtime_ns == newest_state.st_mtime_ns


@pytest.mark.parametrize(
    "fault, says",
    [
        ("nan", "returned nan"),
        ("inf", "returned inf"),
        ("raises", "raised RuntimeError: the scoring service is down"),
    ],
)
def test_a_reward_that_fails_mid_run_stops_clearly_and_resume_goes_on(
    tmp_path, cli, one_thread, monkeypatch, fault, says
):
    import helpers.toy_rewards as toy

    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    run = tmp_path / "run"
    monkeypatch.setattr(toy, "CALLS", 0)
    monkeypatch.setenv("TOY_REWARD_FAULT", f"{fault}@17")  # 4 completions a step: the 17th is step 5's
    code, _, err = cli(*RL, f"data.train={prompts}", f"out={run}")
    message = one_paragraph(err)
    assert code == 2
    assert f"reward 'helpers.toy_rewards:faulty' {says}" in message
    assert "This happened at step 5." in message
    assert f"The newest complete checkpoint is {run}/checkpoints/step-4" in message
    assert checkpoints(run) == ["step-2", "step-4"] and not (run / "final").exists()

    monkeypatch.delenv("TOY_REWARD_FAULT")  # fixed
    code, _, err = cli(*RL, f"data.train={prompts}", f"out={run}")
    assert code == 0, err
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6]
    assert len((run / "samples.jsonl").read_text().splitlines()) == 6 * 4  # each step's samples once


def test_a_generation_that_never_stops_is_cut_at_the_limit_and_reported(
    tmp_path, cli, one_thread, monkeypatch
):
    from tunelab.stages import common, rl

    def no_eos(cfg):
        model, tok = common.prepare_model(cfg)
        model.generation_config.suppress_tokens = [tok.eos_token_id]  # EOS can never be sampled
        return model, tok

    monkeypatch.setattr(rl, "prepare_model", no_eos)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    run = tmp_path / "run"
    code, _, err = cli(*RL, "reward=helpers.toy_rewards:digits", f"data.train={prompts}", f"out={run}")
    assert code == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["stopped_share"] for r in rows] == [0.0] * 6
    assert [r["completion_len"] for r in rows] == [4.0] * 6  # rollout.max_new_tokens
    report = (run / "report.md").read_text()
    assert "completions that hit rollout.max_new_tokens without an EOS: 100% (raise max_new_tokens" in report


def test_a_non_finite_gradient_with_a_finite_loss_is_skipped(tmp_path, one_thread):
    from test_train import sft_config

    from tunelab.data.sources import row_batches
    from tunelab.stages import common, sft
    from tunelab.train.loop import train

    cfg = sft_config(
        tmp_path, tmp_path / "unused.jsonl", "adapter=lora", "train.max_steps=3", "train.batch_size=2"
    )
    model, tok = common.prepare_model(cfg)
    items, _ = common.render_rows(PAIRS, tok, cfg)
    calls = {"n": 0}

    def loss_with_a_nan_gradient(model, batch):
        calls["n"] += 1
        loss_sum, metrics = sft.loss_fn(model, batch)
        if calls["n"] == 2:  # sqrt at 0: value 0, derivative inf, times d(p - p)/dp = 0 -> NaN gradient
            p = next(q for q in model.parameters() if q.requires_grad)
            loss_sum = loss_sum + torch.sqrt(((p - p.detach()) ** 2).sum())
        return loss_sum, metrics

    run = train(
        model, tok, row_batches(items, 2, tok.pad_token_id), loss_with_a_nan_gradient, cfg, stage="sft"
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows] == [0, 1, 0]
    assert rows[1]["loss"] is not None  # the loss was finite; the gradient was not
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "step 2: skipped (non-finite gradient)" in (run / "report.md").read_text()


def wait_for(predicate, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def test_ctrl_c_saves_and_exits_0_and_a_second_ctrl_c_exits_at_once(tmp_path, zygote):
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    run = tmp_path / "run"
    argv = [*SFT, f"data.train={data}", f"out={run}", "train.max_steps=100000", "train.save_every=null"]

    log = tmp_path / "first.log"
    child = zygote.start(argv, log, slow_steps=0.3)
    wait_for(lambda: (run / "metrics.jsonl").is_file(), "the first step")
    sent = time.monotonic()
    os.kill(child.pid, signal.SIGINT)
    assert child.wait(timeout=60) == 0
    assert time.monotonic() - sent < 60  # "within a few seconds", with room for a busy machine
    text = one_paragraph(log.read_text())
    (saved,) = checkpoints(run)
    step = int(saved.split("-")[1])
    assert f"stopped at step {step}/100000; checkpoint saved." in text
    assert f"out={run} resume=auto" in text
    assert (run / "checkpoints" / saved / "state.json").is_file() and not (run / "final").exists()

    log = tmp_path / "second.log"
    child = zygote.start(argv, log, slow_steps=5.0)  # resumes; each step now waits 5 s before its row
    # Both Ctrl-Cs land inside one step's wait. (Sent after a step's row instead, the first could land
    # after the loop's last look at it within that step: the run would stop there, before a second.)
    wait_for(
        lambda: log.is_file() and SLOW_STEP in log.read_text(), "a step after the resume"
    )  # the handler is set
    os.kill(child.pid, signal.SIGINT)
    wait_for(lambda: "press Ctrl-C again" in log.read_text(), "the first Ctrl-C's message")
    os.kill(child.pid, signal.SIGINT)  # while the step still runs
    assert child.wait(timeout=60) == 130
    assert checkpoints(run) == [saved]  # nothing new, nothing half-written picked up
