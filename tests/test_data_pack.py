"""Packing rendered rows (SFT, pre-training): several documents in one row behave exactly as if each ran
alone, and packing changes how a micro-batch is laid out, never which rows it holds."""

import pytest
import torch

from tunelab.data.layout import Segment, lay_out
from tunelab.data.render import RenderOptions, Tokenized, render_pair, render_text
from tunelab.data.sources import row_batches, rows_layout
from tunelab.models.load import load_model

DOCS = [
    "The quick brown fox jumps.",
    "Question: what is two plus two? Answer: 4.",
    "Paris.",
    "A model learns to answer questions.",
]


def spans(batch, items) -> list[range]:
    """The flat (R * T) positions of each row's tokens, from the layout's last token of each."""
    return [range(int(last) - len(it.input_ids) + 1, int(last) + 1) for last, it in zip(batch.last, items)]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_packed_forward_equals_separate_forward_passes(arch):
    model, tok = load_model(f"tiny:{arch}")
    items = [render_text(tok, d) for d in DOCS]
    batch = rows_layout(items, tok.pad_token_id, packed=True, max_len=20)
    assert batch.input_ids.shape[0] < len(items)  # some rows hold several documents
    with torch.no_grad():
        out = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        )
        logits = out.logits.reshape(-1, out.logits.shape[-1])  # (R * T, V)
        for item, span in zip(items, spans(batch, items), strict=True):
            alone = model(input_ids=torch.tensor([item.input_ids])).logits[0]  # (n, V)
            assert torch.allclose(logits[span.start : span.stop], alone, atol=1e-5), (
                f"document {item.text!r} saw another"
            )


def test_packed_rows_restart_positions_and_learn_nothing_across_a_boundary(tiny_llama):
    _, tok = tiny_llama
    items = [
        render_pair(tok, "cat", "chat", RenderOptions()),
        render_text(tok, "Paris."),
        render_text(tok, "fox"),
    ]
    batch = rows_layout(items, tok.pad_token_id, packed=True, max_len=512)
    assert batch.input_ids.shape[0] == 1  # one row
    flat_ids, flat_pos = batch.input_ids.flatten(), batch.position_ids.flatten()
    for item, span in zip(items, spans(batch, items), strict=True):
        assert flat_ids[span.start : span.stop].tolist() == item.input_ids  # never split
        assert flat_pos[span.start : span.stop].tolist() == list(range(len(item.input_ids)))
    starts = {span.start for span in spans(batch, items)}
    assert not starts & set((batch.source + 1).tolist())  # no document's first token is a target
    trained = sum(it.n_trained for it in items) - sum(it.labels[0] != -100 for it in items)
    assert batch.n_targets == trained  # completion-only: the pair's prompt carries no target


def test_packed_mask_by_hand():
    batch = lay_out([Segment([], [[1, 2]]), Segment([], [[3, 4, 5]])], pad_id=0, packed=True, max_len=6)
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 1, 1, 1],
        ]
    )
    assert torch.equal(batch.attention_mask[0, 0].int(), expected)
    assert batch.position_ids.tolist() == [[0, 1, 0, 1, 2]]


def test_padded_batch_counts_targets(tiny_llama):
    _, tok = tiny_llama
    items = [render_text(tok, "fox"), render_text(tok, "The quick brown fox")]
    batch = rows_layout(items, tok.pad_token_id, packed=False)
    assert batch.attention_mask.shape == batch.input_ids.shape
    assert batch.n_targets == sum(len(it.input_ids) - 1 for it in items)


LENGTHS = [3, 40, 5, 38, 4, 39, 6, 41] * 4


def test_group_by_length_keeps_every_row_once_and_cuts_padding():
    items = [Tokenized([1] * n, [1] * n) for n in LENGTHS]
    plain = list(row_batches(items, 4, pad_id=0, seed=1).epoch(0))
    grouped = list(row_batches(items, 4, pad_id=0, seed=1, group_by_length=True).epoch(0))
    assert sorted(int(b.attention_mask.sum(1)[i]) for b in grouped for i in range(4)) == sorted(LENGTHS)
    padding = lambda batches: sum(b.input_ids.numel() - int(b.attention_mask.sum()) for b in batches)  # noqa: E731
    assert padding(grouped) < padding(plain) / 3
    again = list(row_batches(items, 4, pad_id=0, seed=1, group_by_length=True).epoch(0))
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(grouped, again))  # seeded
    assert [
        b.input_ids.shape for b in row_batches(items, 4, 0, 1, group_by_length=True).epoch(0, start=3)
    ] == [b.input_ids.shape for b in grouped[3:]]  # resume skips exactly


@pytest.mark.parametrize("group_by_length", [False, True])
def test_packing_changes_the_layout_not_which_rows_meet_in_a_micro_batch(group_by_length):
    # each row's tokens name it, so equal targets in the same order mean the same rows in the same order
    items = [
        Tokenized(list(range(100 * i, 100 * i + n)), list(range(100 * i, 100 * i + n)))
        for i, n in enumerate(LENGTHS)
    ]
    padded = row_batches(items, 4, 0, seed=2, group_by_length=group_by_length)
    packed = row_batches(items, 4, 0, seed=2, pack_len=64, group_by_length=group_by_length)
    assert packed.micro_batches_per_epoch == padded.micro_batches_per_epoch
    pairs = list(zip(packed.epoch(1, start=2), padded.epoch(1, start=2), strict=True))
    assert all(a.packed and not b.packed for a, b in pairs)
    assert all(torch.equal(a.target_ids, b.target_ids) for a, b in pairs)
    positions = [sum(b.input_ids.numel() for b in side) for side in zip(*pairs, strict=True)]
    assert positions[0] <= positions[1]  # packed never takes more positions than padded
