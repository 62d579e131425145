"""Several processes on this CPU (torchrun, gloo): the same run as one process, sharded or not.

Each test launches `torchrun --nproc_per_node 2 -m tunelab ...` next to a one-process run of the same
global batch and compares the loss curve and the final weights.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl
from safetensors.torch import load_file
from test_train import PAIRS

TESTS = Path(__file__).parent
MORE_PAIRS = PAIRS + [
    {"prompt": f"number {i} in words, please", "completion": w}
    for i, w in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven"])
]  # 16 rows of different lengths


def _env():
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    )


def one_process(*args):
    out = subprocess.run([sys.executable, "-m", "tunelab", *args], capture_output=True, text=True, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def two_processes(*args, check=True, kill_at=0, nproc=2):
    """torchrun with 2 processes; `kill_at`: SIGKILL rank 0 after that step (torchrun then stops both)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    target = [str(TESTS / "helpers" / "killed_run.py"), str(kill_at)] if kill_at else ["-m", "tunelab"]
    out = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", str(nproc), *target, *args],
        capture_output=True,
        text=True,
        env=_env(),
    )
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    final = run / "final"
    name = (
        "adapter_model.safetensors" if (final / "adapter_model.safetensors").exists() else "model.safetensors"
    )
    return load_file(final / name)


def assert_same_run(a: Path, b: Path, tol: float):
    ma, mb = metrics(a), metrics(b)
    assert [r["step"] for r in ma] == [r["step"] for r in mb]
    for ra, rb in zip(ma, mb):
        assert ra["tokens"] == rb["tokens"]  # the same target tokens: no row twice, none left out
        assert ra["loss"] == pytest.approx(rb["loss"], abs=tol), (ra["step"], ra["loss"], rb["loss"])
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    loss_gap = max(abs(ra["loss"] - rb["loss"]) for ra, rb in zip(ma, mb))
    print(f"\n{b.name} vs {a.name}: max loss difference {loss_gap:.2e}, max weight difference {worst:.2e}")
    assert worst < tol, worst


def sft_args(tmp_path, adapter, lr):
    data = write_jsonl(tmp_path / "pairs.jsonl", MORE_PAIRS)
    return [
        "sft",
        "model=tiny:llama",
        f"data.train={data}",
        f"adapter={adapter}",
        "lora.dropout=0",
        "train.max_steps=4",
        f"train.lr={lr}",
        "train.save_every=2",
    ]


LR = {"lora": 5e-3, "none": 3e-3}


@pytest.fixture(scope="module")
def one_process_runs(tmp_path_factory):
    """adapter -> (sft args, the 1-process x micro-batch 8 run), made once for the tests below."""
    made = {}

    def get(adapter):
        if adapter not in made:
            folder = tmp_path_factory.mktemp(f"one-{adapter}")
            args = sft_args(folder, adapter, LR[adapter])
            one_process(*args, "train.batch_size=8", f"out={folder / 'one'}")
            made[adapter] = (args, folder / "one")
        return made[adapter]

    return get


def test_fsdp_on_one_torchrun_process_writes_final(tmp_path, one_process_runs):
    # torchrun with one process still makes a process group, and accelerate wraps the model in DDP:
    # final/ must be written from the model inside it (it once failed on 'save_pretrained')
    args, first = one_process_runs("none")
    two_processes(*args, "train.batch_size=8", "distributed=fsdp", f"out={tmp_path / 'one'}", nproc=1)
    assert (tmp_path / "one" / "final" / "model.safetensors").is_file()
    assert_same_run(first, tmp_path / "one", tol=1e-5)


@pytest.mark.parametrize("adapter", ["lora", "none"])
def test_ddp_two_processes_match_one_process_with_the_same_global_batch(tmp_path, adapter, one_process_runs):
    args, one = one_process_runs(adapter)
    two_processes(*args, "train.batch_size=4", "distributed=ddp", f"out={tmp_path / 'two'}")
    assert_same_run(one, tmp_path / "two", tol=1e-5)
    config = (tmp_path / "two" / "config.yaml").read_text()
    assert "processes: 2" in config and "global_batch: 8" in config
    assert len(list((tmp_path / "two").glob("events.*"))) == 1  # only rank 0 logs
    assert (tmp_path / "two" / "checkpoints" / "step-4" / "rng-1.pt").is_file()  # each rank's RNG


def test_fsdp_full_fine_tuning_matches_one_process_and_resumes_from_a_sharded_checkpoint(
    tmp_path, one_process_runs
):
    args, first = one_process_runs("none")
    two_processes(*args, "train.batch_size=4", "distributed=fsdp", f"out={tmp_path / 'fsdp'}")
    assert_same_run(first, tmp_path / "fsdp", tol=1e-4)
    step2 = tmp_path / "fsdp" / "checkpoints" / "step-2"
    assert (step2 / "sharded").is_dir() and not (step2 / "trainable.safetensors").exists()

    # a run killed after step 3 resumes from its sharded step-2 checkpoint, on 2 processes ...
    resumed = tmp_path / "resumed"
    crash = two_processes(
        *args, "train.batch_size=4", "distributed=fsdp", f"out={resumed}", check=False, kill_at=3
    )
    assert crash.returncode != 0 and not (resumed / "final").exists()
    two_processes(*args, "train.batch_size=4", "distributed=fsdp", f"out={resumed}", "resume=auto")
    assert_same_run(tmp_path / "fsdp", resumed, tol=1e-6)

    # ... and onto one process: torch.distributed.checkpoint re-shards the state
    one = tmp_path / "one_from_sharded"
    shutil.copytree(tmp_path / "fsdp", one)
    shutil.rmtree(one / "checkpoints" / "step-4")
    shutil.rmtree(one / "final")
    one_process(*args, "train.batch_size=8", "distributed=fsdp", f"out={one}", "resume=auto")
    assert_same_run(first, one, tol=1e-4)  # steps 1-2 from 2 processes, 3-4 from one


def test_grpo_on_two_processes_scores_every_group_whole(tmp_path):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": p} for p in ["Say something", "Count with me", "What now", "Tell me more"]],
    )
    args = [
        "rl",
        "model=tiny:llama",
        f"data.train={prompts}",
        "reward=helpers.toy_rewards:digits",
        "rl.group=4",
        "rl.prompts_per_step=2",
        "rollout.max_new_tokens=6",
        "train.max_steps=3",
        "lora.targets=all-linear",
    ]
    one_process(*args, f"out={tmp_path / 'one'}")
    two_processes(*args, "distributed=ddp", f"out={tmp_path / 'two'}")
    m1, m2 = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [1, 2, 3]
    for r1, r2 in zip(m1, m2):
        assert r1["scored"] == r2["scored"] == 2 * 4  # every completion of the step, from both ranks
        assert set(r1) == set(r2)  # the same statistics, reward per source, KL, entropy ...
        assert 0.0 <= r2["zero_var_groups"] <= 1.0
    assert "## RL" in (tmp_path / "two" / "report.md").read_text()


@pytest.mark.parametrize("stage", ["pretrain", "rm", "dpo"])
def test_every_stage_runs_unchanged_under_torchrun(tmp_path, stage):
    if stage == "pretrain":
        data = write_jsonl(
            tmp_path / "text.jsonl",
            [{"text": f"document {i}: the river runs past the hills"} for i in range(40)],
        )
        extra = ["train.max_len=16"]
    else:
        rows = [
            {"prompt": f"What is {i} + {i}?", "chosen": str(2 * i), "rejected": str(2 * i + 1)}
            for i in range(16)
        ]
        data = write_jsonl(tmp_path / "pref.jsonl", rows)
        extra = ["adapter=lora", "data.eval_split=0"]
    args = [
        stage,
        "model=tiny:llama",
        f"data.train={data}",
        "train.max_steps=2",
        "train.batch_size=2",
        *extra,
    ]
    two_processes(*args, f"out={tmp_path / 'two'}")  # distributed=none under torchrun means DDP
    run = tmp_path / "two"
    assert (
        "processes: 2" in (run / "config.yaml").read_text()
        and "distributed_mode: ddp" in (run / "config.yaml").read_text()
    )
    assert [r["step"] for r in metrics(run)] == [1, 2]
    assert (run / "final").is_dir() and (run / "report.md").is_file()


def test_to_device_moves_every_tensor_of_a_batch_and_keeps_the_rest():
    from tunelab.data.layout import Segment, lay_out
    from tunelab.rl.rollout import RolloutBatch
    from tunelab.train.dist import to_device

    rows = lay_out([Segment([], [[1, 2, 3]]), Segment([], [[4, 5]])], pad_id=0, packed=True, max_len=8)
    lm = to_device(rows, torch.device("meta"))
    assert lm.input_ids.device.type == "meta" and lm.attention_mask.device.type == "meta"
    assert lm.packed and lm.n_tokens == 5 and lm.n_seqs == 2

    k = torch.zeros(4)
    seqs = lay_out([Segment([1], [[2, 3], [4, 5]])], pad_id=0, packed=False)  # 4 targets
    roll = RolloutBatch(seqs, seqs.target_seq, k, None, k, None, None, k[:2], {"reward": 0.5})
    moved = to_device(roll, torch.device("meta"))
    assert moved.old_logp.device.type == "meta" and moved.ref_logp is None and moved.stats == {"reward": 0.5}
    assert moved.n_targets == 4 and roll.old_logp.device.type == "cpu"  # the source's batch is left as it was
