"""Packing: several documents in one sequence behave exactly as if each ran alone."""

import pytest
import torch

from tunelab.data.batch import block_causal_mask, collate, pack
from tunelab.data.render import IGNORE, RenderOptions, render_pair, render_text
from tunelab.models.load import load_model

DOCS = [
    "The quick brown fox jumps.",
    "Question: what is two plus two? Answer: 4.",
    "Paris.",
    "A model learns to answer questions.",
]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_packed_forward_equals_separate_forward_passes(arch):
    model, tok = load_model(f"tiny:{arch}")
    items = [render_text(tok, d) for d in DOCS]
    packed = pack(items, max_len=48)
    assert len(packed) >= 2  # some sequences hold several documents, and there is padding
    batch = collate(packed, pad_id=tok.pad_token_id)
    with torch.no_grad():
        logits = model(**batch.model_inputs()).logits  # (B, T, V)
        k, offset = 0, 0
        for item in items:
            n = len(item.input_ids)
            if offset + n > len(packed[k].input_ids):
                k, offset = k + 1, 0
            alone = model(input_ids=torch.tensor([item.input_ids])).logits[0]  # (n, V)
            assert torch.allclose(logits[k, offset : offset + n], alone, atol=1e-5), (
                f"document {item.text!r} saw another"
            )
            offset += n


def test_pack_resets_positions_and_masks_document_starts(tiny_llama):
    _, tok = tiny_llama
    items = [
        render_pair(tok, "cat", "chat", RenderOptions()),
        render_text(tok, "Paris."),
        render_text(tok, "fox"),
    ]
    (seq,) = pack(items, max_len=512)
    starts = [0, len(items[0].input_ids), len(items[0].input_ids) + len(items[1].input_ids)]
    assert [i for i, p in enumerate(seq.position_ids) if p == 0] == starts
    assert all(seq.labels[s] == IGNORE for s in starts)  # nothing is learnt across a boundary
    assert seq.input_ids == sum((it.input_ids for it in items), [])


def test_pack_never_splits_a_document():
    from tunelab.data.render import Tokenized

    items = [Tokenized([1] * n, [1] * n) for n in (5, 4, 3, 6, 2)]
    seqs = pack(items, max_len=8)
    assert [len(s.input_ids) for s in seqs] == [5, 7, 8]  # next-fit: 5 | 4+3 | 6+2
    with pytest.raises(ValueError, match="longer than max_len"):
        pack([Tokenized([1] * 9, [1] * 9)], max_len=8)


def test_block_causal_mask_by_hand():
    position_ids = torch.tensor([[0, 1, 0, 1, 2, 0]])  # docs of length 2 and 3, then one pad
    mask = block_causal_mask(position_ids, torch.tensor([5]))[0, 0].int()
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],  # the pad sees only itself
        ]
    )
    assert torch.equal(mask, expected)


def test_padded_batch_counts_targets(tiny_llama):
    _, tok = tiny_llama
    items = [render_text(tok, "fox"), render_text(tok, "The quick brown fox")]
    batch = collate(items, pad_id=tok.pad_token_id)
    assert batch.attention_mask.shape == batch.input_ids.shape
    assert batch.n_targets == sum(len(it.input_ids) - 1 for it in items)


def test_group_by_length_keeps_every_row_once_and_cuts_padding():
    from tunelab.data.render import Tokenized
    from tunelab.data.sources import row_batches

    lengths = [3, 40, 5, 38, 4, 39, 6, 41] * 4
    items = [Tokenized([1] * n, [1] * n) for n in lengths]
    plain = list(row_batches(items, 4, pad_id=0, seed=1).epoch(0))
    grouped = list(row_batches(items, 4, pad_id=0, seed=1, group_by_length=True).epoch(0))
    assert sorted(int(b.attention_mask.sum(1)[i]) for b in grouped for i in range(4)) == sorted(lengths)
    padding = lambda batches: sum(b.input_ids.numel() - int(b.attention_mask.sum()) for b in batches)  # noqa: E731
    assert padding(grouped) < padding(plain) / 3
    again = list(row_batches(items, 4, pad_id=0, seed=1, group_by_length=True).epoch(0))
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(grouped, again))  # seeded
    assert [
        b.input_ids.shape for b in row_batches(items, 4, 0, 1, group_by_length=True).epoch(0, start=3)
    ] == [b.input_ids.shape for b in grouped[3:]]  # resume skips exactly
