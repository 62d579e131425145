"""The guard watches weights, checkpoints prove themselves, and a run folder never mixes two runs
(issue 21, items 3 and 4; issue 25, item 1)."""

import json
import math

import pytest
import torch
from conftest import write_jsonl
from safetensors.torch import load_file
from test_faults import SFT as FAULTS_SFT
from test_faults import checkpoints, one_paragraph, steps_logged
from test_train import PAIRS, sft_config

from tunelab.config.schema import GuardSection
from tunelab.errors import TunelabError
from tunelab.train import checkpoint as ckpt
from tunelab.train.guard import Guard, StepUndo, guarded_step

# these runs are resumed from their finished checkpoints (damaged or not), so they keep the optimizer state
SFT = [*FAULTS_SFT, "train.keep_optimizer=true"]

# ---------------------------------------------------------------- the guard and the weights


def test_an_update_that_makes_a_weight_non_finite_is_undone_exactly_and_counted():
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = torch.optim.SGD([weight], lr=1e38, momentum=0.9)  # 1e38 x a gradient of 10: inf
    guard = Guard(GuardSection())
    undo = StepUndo([weight], optimizer)
    weight.grad = torch.tensor([1e-38, 1e-38])
    assert guarded_step(optimizer, undo, guard) is None  # 1e38 x 1e-38 = 1: finite, kept
    kept, momentum = weight.detach().clone(), optimizer.state[weight]["momentum_buffer"].clone()
    weight.grad = torch.tensor([10.0, 0.0])
    assert guarded_step(optimizer, undo, guard) == "the update made trainable weights non-finite (undone)"
    assert torch.equal(weight.detach(), kept)  # as before the step, optimizer state included
    assert torch.equal(optimizer.state[weight]["momentum_buffer"], momentum)
    assert guard.skipped == 1 and guard.bad_in_row == 1


def test_without_room_for_an_undo_a_poisoned_update_rolls_back_at_once():
    weight = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = torch.optim.SGD([weight], lr=1e38)
    guard = Guard(GuardSection(max_bad=3))
    weight.grad = torch.tensor([10.0])
    reason = guarded_step(optimizer, StepUndo([weight], optimizer, enabled=False), guard)
    assert "rolling back" in reason and guard.must_roll_back


def _poisoning_loss(at_calls):
    """SFT's loss; at the given calls the weights are overwritten with NaN first (a broken kernel, a
    bit flip): every later loss is NaN until the guard rolls back."""
    from tunelab.stages import sft

    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        if calls["n"] in at_calls:
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))
        return sft.loss_fn(model, batch)

    return loss_fn


def _train(tmp_path, loss_fn, *overrides):
    from tunelab.data.sources import row_batches
    from tunelab.stages import common
    from tunelab.train.loop import train

    cfg = sft_config(tmp_path, tmp_path / "unused.jsonl", "adapter=lora", "train.batch_size=2", *overrides)
    model, tok = common.prepare_model(cfg)
    items, _ = common.render_rows(PAIRS, tok, cfg)
    return train(model, tok, row_batches(items, 2, tok.pad_token_id), loss_fn, cfg, stage="sft"), model


def test_poisoned_weights_are_never_checkpointed_and_the_rollback_goes_to_a_healthy_one(tmp_path, one_thread):
    # poisoned during step 5: steps 5, 6, 7 are NaN (skipped), step-6 is not written, and the third
    # bad update rolls back to step-4, the newest verified checkpoint; the run then trains on to 10
    run, model = _train(
        tmp_path, _poisoning_loss({5}), "train.max_steps=10", "train.save_every=2", "train.keep_last=5"
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["skipped"]] == [5, 6, 7]
    assert all(r["loss"] is not None for r in rows[7:])  # healthy again after the rollback
    assert checkpoints(run) == ["step-10", "step-2", "step-4", "step-8"]  # no step-6
    for name in checkpoints(run):
        assert all(
            torch.isfinite(t).all()
            for t in load_file(run / "checkpoints" / name / "trainable.safetensors").values()
        )
    assert all(torch.isfinite(p).all() for p in model.parameters())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["guard"]["rollbacks"] == 1 and "step-4" in summary["guard"]["events"][-1]["to"]


def test_a_run_that_ends_with_non_finite_weights_fails_and_writes_no_final_model(tmp_path, one_thread):
    with pytest.raises(TunelabError) as err:
        _train(tmp_path, _poisoning_loss({6}), "train.max_steps=6", "train.save_every=2")
    message = str(err.value)
    assert "training ended with non-finite trainable weights, so no final model was written" in message
    assert "Lower train.lr" in message
    run = tmp_path / "run"
    assert not (run / "final").exists() and checkpoints(run) == ["step-2", "step-4"]  # no step-6


def test_a_run_that_skipped_most_updates_fails_with_what_to_change(tmp_path, one_thread):
    from tunelab.stages import sft

    def always_nan(model, batch):
        loss_sum, metrics = sft.loss_fn(model, batch)
        return loss_sum * float("nan"), metrics

    with pytest.raises(TunelabError) as err:
        _train(tmp_path, always_nan, "train.max_steps=4", "train.guard.max_bad=100")
    assert (
        "4 of 4 updates were skipped by the divergence guard (100%, over train.guard.max_skipped_share=0.5)"
        in str(err.value)
    )
    run = tmp_path / "run"
    assert "## Failed" in (run / "report.md").read_text()
    assert json.loads((run / "summary.json").read_text())["failed"]
    with pytest.raises(TunelabError, match="4 of 4 updates were skipped"):  # a rerun is no success either
        _train(tmp_path, always_nan, "train.max_steps=4", "train.guard.max_bad=100")
    run2, _ = _train(
        tmp_path / "b",
        always_nan,
        "train.max_steps=4",
        "train.guard.max_bad=100",
        "train.guard.max_skipped_share=1",
    )
    assert (run2 / "final").is_dir()  # asked for: never fail on skips


# ---------------------------------------------------------------- checkpoints that prove themselves


@pytest.fixture
def finished(tmp_path, cli, one_thread):
    """A finished 6-step LoRA run with checkpoints at steps 2, 4, 6 (keep_last=3), optimizer state kept."""
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    run = tmp_path / "run"
    code, _, err = cli(*SFT, "train.keep_last=3", f"data.train={data}", f"out={run}")
    assert code == 0, err
    return run, data


def test_every_checkpoint_carries_a_manifest_of_sizes_and_checksums(finished):
    run, _ = finished
    for name in checkpoints(run):
        folder = run / "checkpoints" / name
        listed = json.loads((folder / "manifest.json").read_text())["files"]
        assert set(listed) == {p.name for p in folder.iterdir()} - {"manifest.json"}
        assert all(len(f["sha256"]) == 64 for f in listed.values())
        assert ckpt.verify(folder) is None


@pytest.mark.parametrize(
    "damage, says",
    [
        ("overwrite", "trainable.safetensors does not match its checksum"),
        ("truncate", "optimizer.pt has"),
        ("remove", "rng.pt is missing"),
        ("manifest", "it has no manifest.json"),
    ],
)
def test_a_damaged_newest_checkpoint_is_passed_over_saying_which_and_why(finished, cli, damage, says):
    run, data = finished
    newest = run / "checkpoints" / "step-6"
    if damage == "overwrite":  # same size, other bytes: only the checksum can tell
        path = newest / "trainable.safetensors"
        raw = bytearray(path.read_bytes())
        raw[-64:] = b"\xff" * 64
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        path = newest / "optimizer.pt"
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "remove":
        (newest / "rng.pt").unlink()
    else:
        (newest / "manifest.json").unlink()
    code, _, err = cli(
        *SFT,
        "train.keep_last=3",
        "train.max_steps=8",
        f"data.train={data}",
        f"out={run}",
    )
    message = one_paragraph(err)
    assert code == 0, err
    assert f"checkpoint step-6: {says}" in message and "resuming from step-4 instead" in message
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6, 7, 8]
    weights = load_file(run / "final" / "adapter_model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_no_intact_checkpoint_or_a_damaged_named_one_stops_with_a_message(finished, cli):
    run, data = finished
    for name in checkpoints(run):
        (run / "checkpoints" / name / "state.json").write_text("{}")
    code, _, err = cli(*SFT, "train.max_steps=8", f"data.train={data}", f"out={run}")
    message = one_paragraph(err)
    assert code == 2 and f"No intact checkpoint in {run}/checkpoints to resume from" in message
    assert "step-6: state.json has 2 bytes where" in message and "resume=never" in message
    code, _, err = cli(*SFT, f"resume={run}/checkpoints/step-4", f"data.train={data}", f"out={run}")
    assert (
        code == 2
        and f"resume={run}/checkpoints/step-4: cannot resume from it: state.json has" in one_paragraph(err)
    )


# ---------------------------------------------------------------- a run folder holds one run


@pytest.mark.parametrize(
    "change, keys",
    [
        (["lora.r=8"], "lora.r: 16 -> 8"),
        (["adapter=none"], "adapter: lora -> none"),
        (["adapter=prompt"], "adapter: lora -> prompt"),
        (["data.pack=true"], "data.pack: false -> true"),
        (["model=tiny:qwen2"], "model.name: tiny:llama -> tiny:qwen2"),
        (["seed=1", "lora.alpha=8"], "lora.alpha: 32.0 -> 8.0; seed: 0 -> 1"),
        (["train.batch_size=4"], "train.batch_size x processes: 2 -> 4"),
    ],
)
def test_going_on_with_settings_that_change_what_is_trained_is_refused_naming_the_keys(
    finished, cli, change, keys
):
    run, data = finished
    before = {name: (run / name).read_bytes() for name in ("config.yaml", "report.md", "history.jsonl")}
    code, _, err = cli(
        *SFT, "train.keep_last=3", "train.max_steps=8", *change, f"data.train={data}", f"out={run}"
    )
    message = one_paragraph(err)
    assert code == 2
    assert f"{run} holds a finished run trained with other settings ({keys})" in message
    assert "out=NEW" in message and "resume=never" in message
    assert {name: (run / name).read_bytes() for name in before} == before  # nothing rewritten
    code, _, err = cli(*SFT, *change, "resume=never", f"data.train={data}", f"out={run}")
    assert code == 0, err  # the second way on: start again, replacing it


def test_other_data_under_the_same_name_is_refused(finished, cli):
    run, data = finished
    write_jsonl(data, PAIRS[::-1])  # the same file name, other contents
    code, _, err = cli(*SFT, "train.max_steps=8", f"data.train={data}", f"out={run}")
    assert code == 2 and "data.train (contents): 1 file(s), sha256" in one_paragraph(err)


def test_a_finished_run_rerun_as_it_was_trains_nothing_and_rewrites_nothing(finished, cli):
    run, data = finished
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()}
    code, _, err = cli(*SFT, "train.keep_last=3", f"data.train={data}", f"out={run}")
    assert code == 0 and "holds a finished run with these settings; nothing was trained" in one_paragraph(err)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()} == before
    code, _, err = cli(*SFT, "train.keep_last=3", "train.lr=1e-5", f"data.train={data}", f"out={run}")
    assert code == 0 and "nothing was trained" in one_paragraph(err)  # an allowed change alone trains nothing


def test_settings_that_may_change_on_resume_are_recorded_in_the_history_and_the_report(finished, cli):
    run, data = finished
    code, _, err = cli(
        *SFT, "train.keep_last=3", "train.max_steps=8", "train.lr=1e-5", f"data.train={data}", f"out={run}"
    )
    assert code == 0, err
    assert (
        "changed on resume (recorded in history.jsonl): train.lr 0.0002 -> 1e-05, train.max_steps 6 -> 8"
        in (one_paragraph(err))
    )
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [(h["event"], h["step"]) for h in history] == [("start", 0), ("resume", 6)]
    assert history[1]["changed"] == {"train.lr": [0.0002, 1e-05], "train.max_steps": [6, 8]}
    assert "lr: 1.0e-05" in (run / "config.yaml").read_text()  # the settings now in force
    report = (run / "report.md").read_text()
    assert "## Settings changed on resume" in report and "step 6: train.lr 0.0002 -> 1e-05" in report
    assert steps_logged(run) == list(range(1, 9))
    assert math.isfinite(json.loads((run / "summary.json").read_text())["elapsed_s"])
