"""Speed-ups that must not change behaviour: each fast path gives what the plain path gives."""

from __future__ import annotations

import functools

import pytest
import torch


def lora_model(targets):
    """tiny:llama with a LoRA adapter whose B is random (not zero), so the adapter changes the outputs."""
    from peft import LoraConfig, get_peft_model

    from tunelab.models.load import load_model

    model, tok = load_model("tiny:llama")
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False)
    return get_peft_model(model, config).eval(), tok


@pytest.mark.parametrize("arch", ["llama", "gpt2", "llama+lora"])
def test_greedy_that_drops_finished_rows_gives_hf_greedy_tokens(arch):
    from tunelab.models.generation import complete, decode_dropping_finished, drops_finished_rows, left_padded
    from tunelab.models.load import load_model

    model, tok = lora_model(["q_proj", "v_proj"]) if arch == "llama+lora" else load_model(f"tiny:{arch}")
    model.eval()
    assert drops_finished_rows(model)
    prompts = ["a", "the cat sat on the mat and", "one two three", "x y", "a house by the sea is"]
    enc = left_padded(tok, prompts)
    n_prompt = enc["input_ids"].shape[1]

    def hf(eos):
        with torch.no_grad():
            out = model.generate(
                **enc, do_sample=False, max_new_tokens=10, eos_token_id=eos, pad_token_id=tok.pad_token_id
            )
        return out[:, n_prompt:]

    free = hf(tok.eos_token_id)
    # an "EOS" that some rows produce early and others late or never: rows leave the batch at different steps
    eos = int(free[0, 2])
    assert len({next((k for k, t in enumerate(row) if t == eos), 99) for row in free.tolist()}) > 1
    want = hf(eos)
    got, logp, entropy = decode_dropping_finished(model, enc, 10, {eos}, tok.pad_token_id)
    assert torch.equal(got, want)  # HF also stops when the last row has finished
    assert (logp <= 0).all() and (entropy >= 0).all()
    # complete() decodes through it: the texts HF greedy gives
    texts = [a for a, _, _ in complete(model, tok, prompts, max_new_tokens=10)]
    assert texts == [tok.decode(row, skip_special_tokens=True).strip() for row in free.tolist()]


def test_greedy_leaves_a_repetition_penalty_to_hf():
    from tunelab.models.generation import drops_finished_rows

    model, _ = lora_model(["q_proj"])
    model.generation_config.repetition_penalty = 1.3
    assert not drops_finished_rows(model)


def test_sampling_that_drops_finished_rows_scores_what_a_forward_scores():
    """Sampled tokens: seeded, pad after EOS, and their log-probs / entropies are those a training forward
    computes at the sampling temperature (what RL's old log-probs must be)."""
    from tunelab.data.layout import Segment, lay_out
    from tunelab.models.forward import layout_logprobs
    from tunelab.models.generation import decode_dropping_finished, left_padded

    model, tok = lora_model(["q_proj", "v_proj"])
    enc = left_padded(tok, ["a", "the cat sat on the mat and", "one two three", "x y"])

    def sample(seed, eos):
        torch.manual_seed(seed)
        return decode_dropping_finished(model, enc, 12, eos, tok.pad_token_id, temperature=0.8, top_p=0.9)

    free = sample(3, {-1})[0]  # nothing ends it: 12 tokens a row
    eos = set(
        torch.bincount(free.flatten()).topk(3).indices.tolist()
    )  # frequent: rows end at different steps
    sample = functools.partial(sample, eos=eos)

    new, logp, entropy = sample(3)
    assert torch.equal(new, sample(3)[0]) and not torch.equal(new, sample(4)[0])
    ended = torch.isin(new, torch.tensor(sorted(eos)))
    first_end = torch.where(ended.any(1), ended.float().argmax(1), new.shape[1])
    assert len(set(first_end.tolist())) > 1  # rows really left at different steps
    generated = torch.arange(new.shape[1])[None, :] <= first_end[:, None]  # EOS included
    assert (new[~generated] == tok.pad_token_id).all()
    prompts = [row[m.bool()].tolist() for row, m in zip(enc["input_ids"], enc["attention_mask"], strict=True)]
    segments = [Segment(p, [row[g].tolist()]) for p, row, g in zip(prompts, new, generated, strict=True)]
    with torch.no_grad():
        want_logp, want_entropy, _ = layout_logprobs(
            model, lay_out(segments, 0, packed=False), 0.8, entropy=True
        )
    assert torch.allclose(logp[generated], want_logp, atol=1e-4)
    assert torch.allclose(entropy[generated], want_entropy, atol=1e-4)


def test_top_p_filter_is_hf_top_p():
    from transformers.generation.logits_process import TopPLogitsWarper

    from tunelab.models.generation import _top_p

    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 3
    for p in (0.3, 0.9, 0.999):
        assert torch.equal(_top_p(logits, p), TopPLogitsWarper(p)(None, logits.clone()))


def test_draw_follows_each_rows_distribution_and_never_picks_a_token_of_probability_zero():
    from tunelab.models.generation import draw

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 2.0]])  # unnormalised ok
    torch.manual_seed(0)
    n = 40_000
    tokens = draw(probs.repeat(n, 1)).view(n, 2)  # rows alternate between the two distributions
    share = torch.bincount(tokens[:, 0], minlength=6).double() / n
    # 4 standard errors of a share near 0.5 over 40k draws: 0.01
    assert torch.allclose(share, torch.tensor([0.0, 0.5, 0.0, 0.3, 0.2, 0.0], dtype=torch.float64), atol=0.01)
    assert share[[0, 2, 5]].sum() == 0 and bool((tokens[:, 1] == 5).all())
    torch.manual_seed(0)
    assert torch.equal(draw(probs.repeat(n, 1)).view(n, 2), tokens)  # the seed decides


def test_decoding_a_group_from_one_prompt_forward_equals_decoding_the_repeated_prompts():
    """repeats=G runs each prompt once and repeats its KV cache: the same draws as G copies of the prompt."""
    from tunelab.models.generation import decode_dropping_finished, left_padded

    model, tok = lora_model(["q_proj", "v_proj"])
    prompts = ["the cat sat on the mat and", "x y"]
    G = 3

    def sample(texts, repeats):
        torch.manual_seed(5)
        enc = left_padded(tok, texts)
        return decode_dropping_finished(
            model, enc, 8, {7, 11}, tok.pad_token_id, temperature=1.0, repeats=repeats
        )

    grouped = sample(prompts, G)
    repeated = sample([p for p in prompts for _ in range(G)], 1)
    assert grouped[0].shape[0] == len(prompts) * G
    assert torch.equal(grouped[0], repeated[0])
    assert torch.allclose(grouped[1], repeated[1], atol=1e-5)
    assert torch.allclose(grouped[2], repeated[2], atol=1e-4)


def test_lora_merged_for_sampling_gives_the_adapter_outputs_and_puts_the_base_weights_back_bit_for_bit():
    from tunelab.models.adapters import lora_merged

    model, tok = lora_model(["q_proj", "k_proj", "v_proj", "o_proj"])
    ids = tok(["the cat sat on the mat"], return_tensors="pt")["input_ids"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        want = model(input_ids=ids).logits
        with lora_merged(model):
            merged = [m for m in model.modules() if getattr(m, "merged", False)]
            assert len(merged) == 4 * model.config.num_hidden_layers  # one matmul per layer inside
            got = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not any(getattr(m, "merged", False) for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # not a rounding off
    assert torch.equal(after, want)
    # an exception inside still puts everything back
    try:
        with lora_merged(model):
            raise RuntimeError
    except RuntimeError:
        pass
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_lora_merged_leaves_dora_and_a_disabled_adapter_alone():
    from peft import LoraConfig, get_peft_model

    from tunelab.models.adapters import lora_merged
    from tunelab.models.load import load_model

    model, _ = load_model("tiny:llama")
    dora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    with lora_merged(dora):
        assert not any(getattr(m, "merged", False) for m in dora.modules())
    model, _ = lora_model(["q_proj"])
    with model.disable_adapter(), lora_merged(model):
        assert not any(getattr(m, "merged", False) for m in model.modules())


@pytest.mark.parametrize("masked", [False, True])
def test_one_query_gqa_is_attention_over_the_repeated_key_value_heads(masked):
    from tunelab.models.attention import one_query_gqa

    torch.manual_seed(0)
    B, H, Hkv, L, D = 3, 6, 2, 7, 8
    q, k, v = torch.randn(B, H, 1, D), torch.randn(B, Hkv, L, D), torch.randn(B, Hkv, L, D)
    mask = torch.rand(B, 1, 1, L) > 0.3 if masked else None
    if masked:
        mask[:, :, :, 0] = True  # every row sees a key
    k_rep, v_rep = (x.repeat_interleave(H // Hkv, dim=1) for x in (k, v))  # transformers' repeat_kv
    want = torch.nn.functional.scaled_dot_product_attention(q, k_rep, v_rep, attn_mask=mask, scale=0.3)
    got = one_query_gqa(q, k, v, mask, 0.3)  # (B, 1, H, D)
    assert torch.allclose(got, want.transpose(1, 2), atol=1e-6)
