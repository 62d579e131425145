"""One layout, two ways: for every stage, a packed and a padded batch of the same data give the same
losses, log-probs (or rewards) and gradients within 1e-5. The path is chosen by building the input
(`packed=True|False`), never by patching a private function."""

from __future__ import annotations

import pytest
import torch

from tunelab.config import load_config
from tunelab.data.layout import IGNORE, Segment, lay_out, pair_segment
from tunelab.models.attention import segment_kwargs, view_mask
from tunelab.models.capability import attends_per_view
from tunelab.stages.common import prepare_model

PAIRS = [
    {"prompt": "Say cat", "chosen": "cat cat", "rejected": "no"},
    {"prompt": "Tell me about the river by the old house", "chosen": "it runs", "rejected": "the river runs"},
    {"prompt": "Count", "chosen": "one two three four five", "rejected": "one"},
]
TEXTS = ["cat", "the dog runs past the green hills", "a house by the sea", "bread and water, please"]


def model_for(schema: str, *extra: str, head: str = "lm"):
    from tunelab.config import schema as S

    cfg = load_config(
        getattr(S, schema), None, ["model=tiny:llama", "adapter=lora", "lora.dropout=0", *extra]
    )
    model, tok = prepare_model(cfg, head=head)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the adapter change the outputs
            p.data.normal_(0, 0.05)
    return cfg, model, tok


def loss_grads_values(model, loss_fn, batch, values_fn):
    model.zero_grad()
    loss, _ = loss_fn(model, batch)
    loss = loss / batch.n_targets  # what the loop backpropagates: the mean over the batch's units
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    with torch.no_grad():
        values = values_fn(model, batch)
    return loss.detach(), values, grads


def sft_case(packed: bool):
    # the stage's own batch source: rows rendered with completion-only labels, one micro-batch of all
    from tunelab.data.sources import row_batches
    from tunelab.models.forward import layout_logprobs
    from tunelab.stages import common, sft

    cfg, model, tok = model_for("SFTConfig")
    rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in PAIRS]
    items, _ = common.render_rows(rows, tok, cfg)
    pack_len = 200 if packed else None
    (batch,) = row_batches(items, len(items), tok.pad_token_id, 0, pack_len, shuffle=False).all()
    return model, sft.loss_fn, batch, lambda m, b: layout_logprobs(m, b)[0]


def pretrain_case(packed: bool):
    # the stage's own block source over a text file: full blocks of 8 tokens, every token but the first a target
    import json
    import tempfile
    from pathlib import Path

    from tunelab.data.sources import TextBlocks
    from tunelab.models.forward import layout_logprobs
    from tunelab.stages import pretrain

    _, model, tok = model_for("PretrainConfig")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "text.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
        blocks = TextBlocks([str(path)], tok, block_len=8, batch_size=4, seed=0, packed=packed)
        batch = next(iter(blocks.epoch(0)))
    return model, pretrain.loss_fn, batch, lambda m, b: layout_logprobs(m, b)[0]


def rm_case(packed: bool):
    from tunelab.data.pairs import collate_pairs
    from tunelab.models.reward import layout_rewards
    from tunelab.stages import rm

    cfg, model, tok = model_for("RMConfig", head="reward")
    pairs, _ = rm.render_pairs(PAIRS, tok, cfg)
    batch = collate_pairs(pairs, tok.pad_token_id, packed=packed, max_len=None, views=packed)
    return model, rm.make_loss_fn(), batch, lambda m, b: layout_rewards(m, b.seqs)


def dpo_case(packed: bool):
    from tunelab.models.forward import sequence_logprobs
    from tunelab.stages import dpo

    cfg, model, tok = model_for("DPOConfig")
    pairs = dpo.render_pairs(PAIRS, tok, cfg)
    batch = dpo.collate_dpo(pairs, tok.pad_token_id, packed=packed, max_len=None, views=packed)
    return model, dpo.make_loss_fn(cfg), batch, lambda m, b: sequence_logprobs(m, b.seqs)


def rl_case(packed: bool):
    from tunelab.models.forward import layout_logprobs
    from tunelab.rl.rollout import RolloutBatch
    from tunelab.stages import rl

    cfg, model, tok = model_for("RLConfig", "kl.beta=0.1", "kl.mode=loss")
    g = torch.Generator().manual_seed(0)
    segments = [
        Segment(
            tok(p, add_special_tokens=False)["input_ids"],
            [torch.randint(3, 300, (n,), generator=g).tolist() for n in (2, 5, 8)],
        )
        for p in ("what is two plus two", "a longer question about the cat that sat on the mat")
    ]
    seqs = lay_out(segments, tok.pad_token_id, packed=packed, max_len=None, views=packed)
    with torch.no_grad():  # the sampler's log-probs: the padded forward's, the same for both layouts
        padded = lay_out(segments, tok.pad_token_id, packed=False)
        old = layout_logprobs(model, padded, 0.7)[0] + 0.05 * torch.linspace(-1, 1, padded.n_targets)
    adv = torch.linspace(-1, 1, seqs.n_targets)
    batch = RolloutBatch(seqs, seqs.target_seq, old, old - 0.1, adv, None, None, torch.zeros(6))
    return model, rl.make_loss_fn(cfg), batch, lambda m, b: layout_logprobs(m, b.seqs, 0.7)[0]


CASES = {"sft": sft_case, "pretrain": pretrain_case, "rm": rm_case, "dpo": dpo_case, "rl": rl_case}


@pytest.mark.parametrize("stage", sorted(CASES))
def test_packed_and_padded_layouts_give_the_same_losses_values_and_gradients(stage, one_thread):
    runs = {packed: CASES[stage](packed) for packed in (True, False)}
    layout = {packed: getattr(run[2], "seqs", run[2]) for packed, run in runs.items()}
    assert layout[True].packed and layout[True].attention_mask.dim() == 4  # the packed path is taken
    if stage in ("rm", "dpo", "rl"):  # ragged segments: long rows and attention per view (SDPA)
        assert layout[True].views is not None and segment_kwargs(runs[True][0], layout[True])
    assert not layout[False].packed and layout[False].attention_mask.dim() == 2
    if stage != "pretrain":  # pre-training blocks are full: packed, each fills a row of its own
        assert layout[True].input_ids.shape[0] < layout[True].n_seqs  # rows hold several segments
    assert (layout[True].n_targets, layout[True].n_seqs) == (layout[False].n_targets, layout[False].n_seqs)
    packed = loss_grads_values(*_train_mode(runs[True]))
    padded = loss_grads_values(*_train_mode(runs[False]))
    for name, got, want in zip(("loss", "values", "gradients"), packed, padded, strict=True):
        assert got.shape == want.shape, name
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (name, (got - want).abs().max())


def _train_mode(run):
    model, loss_fn, batch, values_fn = run
    model.train()
    return model, loss_fn, batch, values_fn


def test_a_packed_layout_shares_prompts_caps_rows_and_continues_positions():
    segments = [Segment([1, 2, 3], [[4, 5], [6]]), Segment([7], [[8, 9, 10]])]
    batch = lay_out(segments, pad_id=0, packed=True, max_len=8)
    # row 0: 1 2 3 | 4 5 | 6   (6 positions, the second segment (4) does not fit); row 1: 7 | 8 9 10
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 2, 3, 0, 0]]
    mask = batch.attention_mask[0, 0]
    assert mask[5].tolist() == [True, True, True, False, False, True]  # 6 sees its prompt and itself
    assert mask[4].tolist() == [True, True, True, True, True, False]
    # targets: 4 (from 3), 5 (from 4), 6 (from 3 again), 8 (from 7), 9, 10; continuation by continuation
    assert batch.target_ids.tolist() == [4, 5, 6, 8, 9, 10]
    assert batch.source.tolist() == [2, 3, 2, 6, 7, 8]
    assert batch.target_seq.tolist() == [0, 0, 1, 2, 2, 2]
    assert batch.last.tolist() == [4, 5, 9]
    assert batch.views is None  # no views asked for: the mask runs
    padded = lay_out(segments, pad_id=0, packed=False)
    assert padded.input_ids.tolist() == [[1, 2, 3, 4, 5], [1, 2, 3, 6, 0], [7, 8, 9, 10, 0]]
    assert padded.target_ids.tolist() == batch.target_ids.tolist()
    assert padded.target_seq.tolist() == batch.target_seq.tolist()


def test_long_segments_get_rows_of_their_own_as_a_masked_rows_attention_grows_with_it():
    # costs in positions (layout._masked_cost, MASKED_EVEN = 600): two segments of 300 and 290 in one row
    # of 590: 590 x (1 + 590/600) = 1170; in two rows of 300: 600 x (1 + 300/600) = 900 -> two rows
    long = [Segment([1] * 100, [[2] * 200]), Segment([3] * 90, [[4] * 200])]
    assert lay_out(long, pad_id=0, packed=True, max_len=1024).input_ids.shape == (2, 300)
    # 10 and 9: one row of 19 (19.6) beats two of 10 (20.3): attention is cheap in short rows
    short = [Segment([1] * 4, [[2] * 6]), Segment([3] * 3, [[4] * 6])]
    assert lay_out(short, pad_id=0, packed=True, max_len=1024).input_ids.shape == (1, 19)


def test_a_preference_pair_shares_its_prompt_up_to_the_first_label():
    seg = pair_segment([1, 2, 3, 4], [1, 2, 5], [IGNORE, IGNORE, 3, 4], [IGNORE, IGNORE, IGNORE])
    assert seg.prompt == [1, 2] and seg.continuations == [[3, 4], [5]]
    assert pair_segment([1, 2], [1, 2]).continuations == [[2], [2]]  # each keeps a token of its own


def test_views_let_rows_grow_long_when_that_saves_padding():
    segments = [Segment([1, 2, 3], [[4, 5], [6]]), Segment([7], [[8, 9, 10]])]
    batch = lay_out(segments, pad_id=0, packed=True, max_len=8, views=True)
    # short rows take 2 x 6 positions, one long row 10: one row, and attention per view. Each
    # continuation's keys are its prompt's positions, then its own, right-padded with position 0. A
    # segment's first view asks for all of them (keys 5 and 4: one bucket, queries = keys); the second
    # continuation of segment 0 asks only for its own token at position 5, which sees 3 prompt keys + itself
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]
    first, later = batch.views
    assert first.keys.tolist() == [[0, 1, 2, 3, 4], [6, 7, 8, 9, 0]]
    assert first.queries.tolist() == first.keys.tolist() and first.skip.tolist() == [0, 0]
    assert later.keys.tolist() == [[0, 1, 2, 5]] and later.queries.tolist() == [[5]]
    assert later.skip.tolist() == [3]
    assert view_mask(first) is None  # causal
    assert view_mask(later).tolist() == [[[[True, True, True, True]]]]
    # every position's output is read from one query slot (slots: bucket 0's 2 x 5, then bucket 1's 1)
    assert batch.home.tolist() == [0, 1, 2, 3, 4, 10, 5, 6, 7, 8]
    assert batch.attention_mask.shape == (1, 1, 10, 10)  # the mask stays: eager attention runs it
    group = lay_out([Segment([1, 2, 3], [[4, 5], [6, 7]])], pad_id=0, packed=True, views=True)
    assert group.views is None  # one row either way: nothing to save, the mask runs


def test_views_of_very_different_lengths_go_to_separate_buckets():
    segments = [Segment([1], [[2] * 9, [3]]), Segment([], [[4] * 8])]
    batch = lay_out(segments, pad_id=0, packed=True, max_len=None, views=True)
    # keys (queries): 10 (10), 8 (8) asking for all their keys | 2 (1) asking for its continuation's only
    shapes = [(tuple(b.keys.shape), tuple(b.queries.shape)) for b in batch.views]
    assert shapes == [((2, 10), (2, 10)), ((1, 2), (1, 1))]
    segments = [Segment([1], [[2] * 9, [3]]), Segment([5], [[4] * 8, [6] * 7])]
    batch = lay_out(segments, pad_id=0, packed=True, max_len=None, views=True)
    shapes = [(tuple(b.keys.shape), tuple(b.queries.shape)) for b in batch.views]
    assert shapes == [((2, 10), (2, 10)), ((1, 8), (1, 7)), ((1, 2), (1, 1))]
    flat = batch.input_ids.flatten()
    for b in batch.views:  # each view starts at a real token: its prompt, or its continuation
        assert bool((flat[b.keys[:, 0]] != 0).all()) and bool((flat[b.queries[:, 0]] != 0).all())


@pytest.mark.parametrize("stage", ["rm", "dpo", "rl"])
def test_attention_per_view_is_the_masked_attention(stage, one_thread):
    """The same packed batch through SDPA per view and through eager attention on its 4-D mask."""
    model, loss_fn, batch, values_fn = CASES[stage](True)
    layout = getattr(batch, "seqs", batch)
    assert layout.views is not None
    assert any(bool(b.skip.any()) for b in layout.views)  # views that ask for their continuation only
    with torch.no_grad():
        per_view = values_fn(model, batch)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.set_attn_implementation("eager")
        assert not attends_per_view(model) and not segment_kwargs(model, layout)
        masked = values_fn(model, batch)  # eager attention adds the mask: 0 or the most negative float
    assert torch.allclose(per_view, masked, rtol=1e-5, atol=1e-5), (per_view - masked).abs().max()
