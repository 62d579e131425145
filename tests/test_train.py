"""The training loop and the SFT / pretrain stages, end to end on tiny models."""

import json
import math

import pytest
import torch
from conftest import write_jsonl

from tunelab.config import load_config
from tunelab.config.schema import PretrainConfig, SFTConfig
from tunelab.stages import common, pretrain, sft

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
LR = {"none": 3e-3, "lora": 5e-2, "dora": 5e-2, "prompt": 3e-1, "prefix": 1e-1}


@pytest.fixture
def pairs_file(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", PAIRS)


def sft_config(tmp_path, pairs_file, *overrides):
    return load_config(
        SFTConfig,
        None,
        [
            "model=tiny:llama",
            f"data.train={pairs_file}",
            f"out={tmp_path / 'run'}",
            "train.warmup=0",
            "train.batch_size=4",
            "lora.dropout=0",
            "train.max_grad_norm=null",
            *overrides,
        ],
    )


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def capture_model(monkeypatch, module):
    """Keep the model a stage builds, and a copy of its weights before training."""
    seen = {}

    def wrapped(cfg):
        model, tok = common.prepare_model(cfg)
        seen["model"] = model
        seen["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return model, tok

    monkeypatch.setattr(module, "prepare_model", wrapped)
    return seen


@pytest.mark.parametrize("adapter", ["none", "lora", "dora", "prompt", "prefix"])
def test_each_adapter_learns_and_changes_only_its_own_parameters(tmp_path, pairs_file, monkeypatch, adapter):
    seen = capture_model(monkeypatch, sft)
    cfg = sft_config(
        tmp_path,
        pairs_file,
        f"adapter={adapter}",
        "train.max_steps=30",
        f"train.lr={LR[adapter]}",
        "train.schedule=constant",
        "prompt.tokens=4",
        "lora.targets=all-linear",
        "lora.r=8",
    )
    run = sft.main(cfg)
    rows = metrics(run)
    assert rows[-1]["loss"] < 0.9 * rows[0]["loss"], (
        f"{adapter}: loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}"
    )
    model, before = seen["model"], seen["before"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    for name, p in model.named_parameters():
        changed = not torch.equal(p.detach(), before[name])
        assert changed == (name in trainable), f"{name}: changed={changed}, trainable={name in trainable}"
    if adapter == "prompt":
        assert all("prompt_encoder" in n for n in trainable)  # only the virtual tokens train
    if adapter in ("lora", "dora"):
        assert all("lora_" in n for n in trainable)
    final = run / "final"
    assert (final / ("config.json" if adapter == "none" else "adapter_config.json")).is_file()


def test_micro_batch_times_accumulation_gives_the_same_steps(tmp_path, pairs_file):
    runs = {}
    for micro, accum in [(8, 1), (2, 4), (1, 8)]:
        cfg = sft_config(
            tmp_path,
            pairs_file,
            "adapter=lora",
            "train.max_steps=2",
            f"train.batch_size={micro}",
            f"train.grad_accum={accum}",
            "train.lr=1e-2",
            f"out={tmp_path / f'run{micro}x{accum}'}",
        )
        runs[micro, accum] = metrics(sft.main(cfg))
    reference = runs[8, 1]
    for split, rows in runs.items():
        for got, want in zip(rows, reference, strict=True):
            assert got["loss"] == pytest.approx(want["loss"], abs=1e-5), split
            assert got["grad_norm"] == pytest.approx(want["grad_norm"], abs=1e-5), split  # before clipping
            assert got["tokens"] == want["tokens"]


def test_invariance_of_gradients_directly(tiny_llama):
    """The loop's normalisation, step by step: per-micro-batch sums / global target count."""
    from tunelab.data.render import RenderOptions, render_pair
    from tunelab.data.sources import rows_layout

    model, tok = tiny_llama
    items = [render_pair(tok, r["prompt"], r["completion"], RenderOptions()) for r in PAIRS]
    assert len({len(it.input_ids) for it in items}) > 3  # rows of different lengths

    def grads(micro):
        model.zero_grad()
        batches = [
            rows_layout(items[i : i + micro], tok.pad_token_id, packed=False)
            for i in range(0, len(items), micro)
        ]
        units = sum(b.n_targets for b in batches)
        for b in batches:
            loss_sum, _ = sft.loss_fn(model, b)
            (loss_sum / units).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    g8, g2, g1 = grads(8), grads(2), grads(1)
    assert torch.allclose(g8, g2, atol=1e-5) and torch.allclose(g8, g1, atol=1e-5)
    model.zero_grad()


def test_lora_at_step_zero_is_exactly_the_base_model(tmp_path, pairs_file):
    cfg = sft_config(tmp_path, pairs_file, "adapter=lora")
    model, tok = common.prepare_model(cfg)
    from tunelab.models.load import load_model

    base, _ = load_model("tiny:llama")
    ids = torch.tensor([tok("a house by the sea")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base(ids).logits)


def test_trained_adapter_reloads_to_the_same_outputs_and_merges(tmp_path, pairs_file, monkeypatch):
    from tunelab.models.load import load_model

    seen = capture_model(monkeypatch, sft)
    run = sft.main(
        sft_config(tmp_path, pairs_file, "adapter=lora", "train.max_steps=5", "train.lr=2e-2", "merge=true")
    )
    model = seen["model"].eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        expected = model(ids).logits
        reloaded, _ = load_model(str(run / "final"))  # the adapter folder names its base, tiny:llama
        merged, _ = load_model(str(run / "merged"))
        assert torch.allclose(reloaded(ids).logits, expected, atol=1e-6)
        assert torch.allclose(
            merged(ids).logits, expected, atol=1e-4
        )  # W + BA rounds differently from W x + B A x


def test_guard_skips_nan_and_spike_then_rolls_back(tmp_path, pairs_file):
    from tunelab.data.sources import row_batches
    from tunelab.train.loop import train

    cfg = sft_config(
        tmp_path,
        pairs_file,
        "adapter=lora",
        "train.max_steps=14",
        "train.lr=1e-2",
        "train.save_every=4",
        "train.guard.max_bad=2",
        "train.batch_size=2",
        "train.schedule=constant",
    )
    model, tok = common.prepare_model(cfg)
    items, _ = common.render_rows(PAIRS, tok, cfg)
    calls = {"n": 0}

    def faulty_loss(model, batch):  # one micro-batch per step: call n is step n
        calls["n"] += 1
        loss_sum, metrics = sft.loss_fn(model, batch)
        if calls["n"] == 7:
            return loss_sum * float("nan"), metrics  # a NaN batch
        if calls["n"] == 9:
            return loss_sum * 1000, metrics  # a spike
        if calls["n"] in (11, 12):
            return loss_sum * float("inf"), metrics  # two bad in a row: roll back
        return loss_sum, metrics

    run = train(model, tok, row_batches(items, 2, tok.pad_token_id), faulty_loss, cfg, stage="sft")
    rows = metrics(run)
    assert [r["step"] for r in rows if r["skipped"]] == [7, 9, 11, 12]
    assert rows[6]["loss"] is None  # NaN is logged as null, never trained on
    assert rows[-1]["step"] == 14 and all(math.isfinite(p.sum().item()) for p in model.parameters())
    assert rows[11]["lr"] == pytest.approx(1e-2) and rows[12]["lr"] == pytest.approx(
        0.5e-2
    )  # halved by the rollback
    report = (run / "report.md").read_text()
    assert "updates skipped: 4, rollbacks: 1" in report and "loss spike" in report


def test_early_stopping_keeps_the_best_model_as_final(tmp_path, pairs_file):
    from tunelab.data.sources import row_batches
    from tunelab.train.loop import train

    cfg = sft_config(
        tmp_path,
        pairs_file,
        "adapter=lora",
        "train.max_steps=20",
        "train.eval_every=2",
        "train.lr=1e-2",
        "train.early_stop.patience=2",
    )
    model, tok = common.prepare_model(cfg)
    items, _ = common.render_rows(PAIRS, tok, cfg)
    evals = {"n": 0}

    def worsening_eval(model, batch):  # held-out loss that only gets worse after the first evaluation
        loss_sum, metrics = sft.loss_fn(model, batch)
        if not model.training:
            evals["n"] += 1
            loss_sum = loss_sum.detach() * 0 + 10.0 * evals["n"]
        return loss_sum, metrics

    held = row_batches(items[:2], 2, tok.pad_token_id, shuffle=False).all()
    run = train(
        model,
        tok,
        row_batches(items, 4, tok.pad_token_id),
        worsening_eval,
        cfg,
        stage="sft",
        eval_batches=held,
    )
    rows = metrics(run)
    assert rows[-1]["step"] == 6  # evaluations at 2 (best), 4, 6: patience 2 runs out at step 6
    assert (
        "best eval_loss" in (run / "report.md").read_text() and "at step 2" in (run / "report.md").read_text()
    )
    assert (run / "final" / "adapter_config.json").is_file() and not (run / "best").exists()


def test_pretrain_streams_blocks_and_learns(tmp_path):
    docs = [
        {"text": "The river runs past the green hills. " * 3},
        {"text": "A small bird sings near the window. " * 3},
    ] * 10
    data = write_jsonl(tmp_path / "corpus.jsonl", docs)
    cfg = load_config(
        PretrainConfig,
        None,
        [
            "model=tiny:llama",
            f"data.train={data}",
            f"out={tmp_path / 'p'}",
            "train.max_len=32",
            "train.batch_size=4",
            "train.lr=3e-3",
            "train.epochs=3",
            "data.eval_split=0.1",
            "train.eval_every=5",
            "train.warmup=0",
        ],
    )
    run = pretrain.main(cfg)
    rows = metrics(run)
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    assert any("eval_loss" in r for r in rows)
    config = (run / "config.yaml").read_text()
    assert "total_steps:" in config and "global_batch: 4" in config


def test_text_blocks_overlap_by_one_token_and_cover_the_stream(tiny_llama):
    from tunelab.data.sources import TextBlocks

    _, tok = tiny_llama
    blocks = TextBlocks([], tok, block_len=8, batch_size=2)
    blocks._documents = lambda: iter([list(range(10)), list(range(100, 110))])  # 20 tokens
    got = list(blocks._blocks())
    assert (
        got
        == [[0, 1, 2, 3, 4, 5, 6, 7], [7, 8, 9, 100, 101, 102, 103, 104], [104, 105, 106, 107, 108, 109]][:2]
    )


def test_freed_memory_goes_back_only_when_held_at_rest_beyond_the_earlier_peak(monkeypatch):
    # after each step: (memory held, peak so far). Trimmed when held exceeds the peak before the step:
    # step 2 (a longer batch: 130 > 120) and step 5 (growth: 150 > 140); trimming every step cost ~4 s a step
    from tunelab.train import process

    steps = iter([(100, 120), (130, 140), (110, 140), (135, 140), (150, 155), (120, 155)])
    now = {}
    trims = []

    def held():
        now["held"], now["peak"] = next(steps)
        return now["held"]

    monkeypatch.setattr(process, "resident_bytes", held)
    monkeypatch.setattr(process, "peak_bytes", lambda: now["peak"])
    monkeypatch.setattr(process, "_TRIM", trims.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    freed = process.FreedMemory()
    assert [freed.release() for _ in range(6)] == [False, True, False, False, True, False]
    assert trims == [0, 0]


def test_a_finished_run_keeps_final_and_drops_the_optimizer_state_unless_asked(tmp_path, pairs_file):
    from tunelab.train import checkpoint as ckpt

    args = ["adapter=none", "train.max_steps=4", "train.save_every=2", "train.lr=1e-3"]
    run = sft.main(sft_config(tmp_path, pairs_file, *args, f"out={tmp_path / 'lean'}"))
    steps = [folder for _, folder in ckpt.all_steps(run / "checkpoints")]
    assert steps and all(not (f / "optimizer.pt").exists() for f in steps)
    assert all(ckpt.verify(f) is None for f in steps)  # the manifest says what went
    assert (run / "final" / "model.safetensors").is_file()

    kept = sft.main(
        sft_config(tmp_path, pairs_file, *args, "train.keep_optimizer=true", f"out={tmp_path / 'kept'}")
    )
    assert all((f / "optimizer.pt").is_file() for _, f in ckpt.all_steps(kept / "checkpoints"))

    # training the lean run further resumes from its last checkpoint, the moments starting again
    longer = sft.main(
        sft_config(
            tmp_path,
            pairs_file,
            "adapter=none",
            "train.max_steps=6",
            "train.save_every=2",
            "train.lr=1e-3",
            f"out={run}",
        )
    )
    assert [m["step"] for m in metrics(longer)][-1] == 6
