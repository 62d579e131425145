"""FSDP2 with sharded loading (train/sharded_load.py): on 2 torchrun processes each rank materialises
only its own rows of the weights read from a safetensors folder, and the run is the one-process run."""

import json

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
    args = _args(tmp_path, model_dir, "lora", 5e-3)
    one_process(*args, "train.batch_size=8", f"out={tmp_path / 'one'}")
    two = two_processes(*args, "train.batch_size=4", "distributed=fsdp", f"out={tmp_path / 'two'}")
    assert len(_materialised(two.stderr)) == 2
    assert_same_run(tmp_path / "one", tmp_path / "two", tol=1e-4)  # adapter weights too (final/)


def test_on_one_process_the_weights_are_read_straight_into_place(tmp_path, model_dir):
    # distributed=fsdp on one process: built on the meta device, every byte read once, the plain run
    args = _args(tmp_path, model_dir, "none", 3e-3)
    one_process(*args, "train.batch_size=8", f"out={tmp_path / 'plain'}")
    meta = one_process(*args, "train.batch_size=8", "distributed=fsdp", f"out={tmp_path / 'meta'}")
    ((read, whole),) = _materialised(meta.stderr).values()
    assert read == whole
    assert_same_run(tmp_path / "plain", tmp_path / "meta", tol=1e-6)
