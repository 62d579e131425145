"""FSDP2 with sharded loading (train/sharded_load.py): on 2 torchrun processes each rank materialises
only its own rows of the weights read from a safetensors folder, and the run is the one-process run."""

import json
import subprocess
import sys

import pytest
from conftest import write_jsonl
from test_distributed import MORE_PAIRS, assert_same_run, metrics, one_process, two_processes


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny llama saved as an ordinary HF folder: what sharded loading reads from."""
    from tunelab.models.tiny import tiny_model

    folder = tmp_path_factory.mktemp("tiny_hf")
    model, tok = tiny_model("llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _args(tmp_path, model_dir, adapter, lr):
    data = write_jsonl(tmp_path / "pairs.jsonl", MORE_PAIRS)
    return [
        "sft",
        f"model={model_dir}",
        f"data.train={data}",
        f"adapter={adapter}",
        "lora.dropout=0",
        "train.max_steps=4",
        f"train.lr={lr}",
        "train.save_every=2",
    ]


def _materialised(stderr: str) -> dict[int, tuple[int, int]]:
    """rank -> (parameter bytes it materialised, bytes of the whole model), from the loader's lines."""
    out = {}
    for line in stderr.splitlines():
        if line.startswith("sharded load, rank "):
            words = line.replace(",", "").split()
            out[int(words[3].rstrip(":"))] = (int(words[5]), int(words[7]))
    return out


def test_no_rank_holds_the_full_weights_and_the_run_equals_one_process_and_resumes(tmp_path, model_dir):
    args = _args(tmp_path, model_dir, "none", 3e-3)
    one_process(*args, "train.batch_size=8", f"out={tmp_path / 'one'}")
    two = two_processes(*args, "train.batch_size=4", "distributed=fsdp", f"out={tmp_path / 'two'}")
    seen = _materialised(two.stderr)
    assert set(seen) == {0, 1}
    total = seen[0][1]
    for read, whole in seen.values():
        assert whole == total and read <= 0.5 * total + 1024  # its half of dim 0, no full tensor
    assert sum(read for read, _ in seen.values()) == total  # together, every weight exactly once
    assert_same_run(tmp_path / "one", tmp_path / "two", tol=1e-4)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert len(summary["peak_rss_mb_per_rank"]) == 2 and min(summary["peak_rss_mb_per_rank"]) > 0
    assert "every rank:" in (tmp_path / "two" / "report.md").read_text()

    # killed after step 3, resumed from the sharded step-2 checkpoint: the same run
    resumed = tmp_path / "resumed"
    fsdp = [*args, "train.batch_size=4", "distributed=fsdp", f"out={resumed}"]
    crash = two_processes(*fsdp, check=False, kill_at=3)
    assert crash.returncode != 0 and not (resumed / "final").exists()
    two_processes(*fsdp, "resume=auto")
    assert_same_run(tmp_path / "two", resumed, tol=1e-6)
    assert [r["step"] for r in metrics(resumed)] == [1, 2, 3, 4]


def test_lora_on_a_sharded_base_starts_from_the_adapter_one_process_draws(tmp_path, model_dir):
    # the sharded run also recomputes its layers in backward (activation checkpointing inside FSDP2
    # units): the same losses and adapter as one plain process
    args = _args(tmp_path, model_dir, "lora", 5e-3)
    one_process(*args, "train.batch_size=8", f"out={tmp_path / 'one'}")
    fsdp = ["train.batch_size=4", "distributed=fsdp", "train.activation_checkpointing=true"]
    two = two_processes(*args, *fsdp, f"out={tmp_path / 'two'}")
    assert len(_materialised(two.stderr)) == 2
    assert_same_run(tmp_path / "one", tmp_path / "two", tol=1e-4)  # adapter weights too (final/)
    assert "activation_checkpointing: true" in (tmp_path / "two" / "config.yaml").read_text()


def test_on_one_process_the_weights_are_read_straight_into_place(tmp_path, model_dir):
    # distributed=fsdp on one process: built on the meta device, every byte read once, the plain run
    args = _args(tmp_path, model_dir, "none", 3e-3)
    one_process(*args, "train.batch_size=8", f"out={tmp_path / 'plain'}")
    meta = one_process(*args, "train.batch_size=8", "distributed=fsdp", f"out={tmp_path / 'meta'}")
    ((read, whole),) = _materialised(meta.stderr).values()
    assert read == whole
    assert_same_run(tmp_path / "plain", tmp_path / "meta", tol=1e-6)


PROBE = """
import sys, torch
from tunelab.train.process import resident_bytes, unpool_large_blocks
if sys.argv[1] == "unpooled":
    assert unpool_large_blocks()
torch.empty(8 << 20, dtype=torch.uint8).fill_(1)  # a freed 8 MiB mapping: glibc's threshold rises to it
before = resident_bytes()
blocks = [torch.ones(1 << 20) for _ in range(100)]  # 100 x 4 MiB, like a step's per-layer temporaries
keep = blocks[-1]
del blocks
print((resident_bytes() - before) / 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_under_fsdp_freed_large_tensors_go_back_to_the_os():
    # 99 of 100 tensors of 4 MiB freed: glibc's heap keeps them (the last one pins its top), ~400 MB
    # held for nothing; as their own mappings (distributed=fsdp) they go back at once
    def held_mb(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return float(out.stdout)

    assert held_mb("pooled") > 300
    assert held_mb("unpooled") < 50
