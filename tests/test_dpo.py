"""DPO's batches: grouped by length on request, every pair once per epoch."""

import random
from types import SimpleNamespace

import pytest
import torch

from tunelab.config import load_config
from tunelab.config.schema import DPOConfig
from tunelab.data.render import IGNORE, Tokenized
from tunelab.stages import dpo


def answer(prompt: list[int], n: int, token: int) -> Tokenized:
    """prompt + n answer tokens; labels only on the answer."""
    return Tokenized(prompt + [token] * n, [IGNORE] * len(prompt) + [token] * n)


def test_group_by_length_reaches_the_dpo_batches():
    """data.group_by_length groups pairs (by their longer row) as SFT groups rows; every pair still
    appears once per epoch, in a seeded order, and a resumed epoch skips exactly what was done."""
    lengths = [random.Random(i).choice([3, 40]) for i in range(64)]  # short pairs and long pairs
    pairs = [(answer([5, i], n, 7), answer([5, i], n - 1, 8)) for i, n in enumerate(lengths)]
    tok = SimpleNamespace(pad_token_id=0)

    def epoch(group, start=0):
        cfg = load_config(DPOConfig, None, ["train.batch_size=4", f"data.group_by_length={group}"])
        return list(dpo.train_batches(pairs, tok, cfg).epoch(0, start))

    def padding(batches):
        return sum(b.seqs.input_ids.numel() - b.seqs.n_tokens for b in batches)

    def pair_ids(batches):  # each row's second token is its pair's index
        return [b.seqs.input_ids[:, 1].tolist() for b in batches]

    plain, grouped = epoch(False), epoch(True)
    assert padding(grouped) < padding(plain) / 3
    assert sorted(i for row in pair_ids(grouped) for i in row) == sorted(2 * list(range(64)))  # each once
    assert all(torch.equal(a.seqs.input_ids, b.seqs.input_ids) for a, b in zip(grouped, epoch(True)))
    assert pair_ids(epoch(True, start=5)) == pair_ids(grouped[5:])  # a resumed epoch skips exactly


@pytest.mark.parametrize("groups", [[[0, 1, 2]], [[0, 2], [1]]])
def test_each_prompt_runs_once_per_pair_with_the_plain_loss_and_gradients(monkeypatch, groups):
    """A pair's chosen and rejected rows share the prompt, run once with its KV cache shared; the DPO
    loss and the LoRA gradients equal those of the plain forward over each row on its own. Pairs may
    also run in groups (of similar length, models/by_length.py), each its own forward."""
    from tunelab.data.batch import collate
    from tunelab.losses.preference import dpo_sigmoid_loss
    from tunelab.models import by_length, forward
    from tunelab.stages.common import prepare_model

    cfg = load_config(DPOConfig, None, ["model=tiny:llama", "adapter=lora", "lora.dropout=0"])
    model, tok = prepare_model(cfg)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the adapter change the policy
            p.data.normal_(0, 0.05)
    rows = [
        {"prompt": "Say cat", "chosen": "cat cat", "rejected": "no"},
        {
            "prompt": "Tell me about the river by the old house",
            "chosen": "it runs",
            "rejected": "the river runs past the hills",
        },
        {"prompt": "Count", "chosen": "one two three four five", "rejected": "one"},
    ]
    pairs = [
        tuple(
            dpo.render_with_labels(tok, r["prompt"], r[k], dpo.render_options(cfg))
            for k in ("chosen", "rejected")
        )
        for r in rows
    ]
    batch = dpo.collate_dpo(pairs, tok.pad_token_id)
    assert len(set(dpo.shared_head(c, r) for c, r in pairs)) > 1  # prompts of different lengths

    def loss_and_grads(loss_fn):
        model.zero_grad()
        loss = loss_fn(model, batch)[0]
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    shared_calls = []
    plain_shared_logits = forward._shared_prompt_logits
    monkeypatch.setattr(
        forward, "_shared_prompt_logits", lambda *a: shared_calls.append(1) or plain_shared_logits(*a)
    )
    monkeypatch.setattr(by_length, "length_groups", lambda lengths: groups)
    shared_loss, shared_grads = loss_and_grads(dpo.make_loss_fn(cfg))
    assert len(shared_calls) == 2 * len(groups)  # the policy's forward and the reference's, per group

    # each row on its own: right-padded rows, chosen then rejected, the plain forward
    monkeypatch.setattr(forward, "shared_prompts", lambda *a: None)
    plain = collate([c for c, _ in pairs] + [r for _, r in pairs], tok.pad_token_id)

    def plain_loss(model, _):
        pc, pr = forward.sequence_logprobs(model, plain).chunk(2)
        with torch.no_grad(), model.disable_adapter():
            rc, rr = forward.sequence_logprobs(model, plain).chunk(2)
        return dpo_sigmoid_loss(pc, pr, rc, rr, cfg.dpo.beta), {}

    plain_loss_value, plain_grads = loss_and_grads(plain_loss)
    assert len(shared_calls) == 2 * len(groups)
    assert abs(shared_loss.item() - plain_loss_value.item()) < 1e-5
    assert shared_grads.keys() == plain_grads.keys() and len(plain_grads) > 0
    for name, grad in plain_grads.items():
        assert torch.allclose(shared_grads[name], grad, atol=1e-5), name
    assert any(g.abs().sum() > 0 for n, g in plain_grads.items() if "lora_A" in n)
