"""Model references: tiny models are reproducible, bad references fail clearly, adapters load back."""

import time

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.models.load import load_model, load_tokenizer, resolve


def test_tiny_same_seed_same_weights_other_seed_differs():
    a, _ = load_model("tiny:llama", seed=1)
    b, _ = load_model("tiny:llama", seed=1)
    c, _ = load_model("tiny:llama", seed=2)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_tiny_models_have_what_tests_need():
    for arch, chat in [("llama", True), ("qwen2", True), ("gpt2", False)]:
        model, tok = load_model(f"tiny:{arch}")
        assert bool(tok.chat_template) == chat
        assert tok.pad_token_id is not None and tok.eos_token_id is not None
        assert model.config.vocab_size == len(tok)
        assert sum(p.numel() for p in model.parameters()) < 200_000


@pytest.mark.parametrize(
    "ref, message",
    [
        ("/no/such/model", "does not exist"),
        ("missing.gguf", "does not exist"),
        ("tiny:bert", "Unknown tiny model"),
        ("smollm3", "does not exist"),
    ],
)
def test_bad_references_fail_clearly(ref, message):
    with pytest.raises(TunelabError, match=message):
        load_model(ref)


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(TunelabError, match="neither an HF model"):
        resolve(str(tmp_path))


def test_hub_id_offline_fails_at_once_without_network():
    start = time.monotonic()
    with pytest.raises(TunelabError, match="offline by default"):
        load_tokenizer("some-org/some-model-that-is-not-cached")
    assert resolve("some-org/x").kind == "hub"
    assert time.monotonic() - start < 60  # not a timing assertion on speed: it must simply not hang


def test_hf_folder_round_trip(tmp_path, tiny_llama):
    model, tok = tiny_llama
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_model(str(tmp_path))
    ids = torch.tensor([tok("The quick brown fox")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-6)
    assert tok2.chat_template == tok.chat_template


def test_lora_adapter_saves_and_reloads_to_the_same_outputs(tmp_path):
    from peft import LoraConfig, get_peft_model

    base, tok = load_model("tiny:llama")
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # B starts at zero; make the adapter actually change the outputs
    ids = torch.tensor([tok("The quick brown fox")["input_ids"]])
    with torch.no_grad():
        expected = peft_model(ids).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    tok.save_pretrained(tmp_path / "adapter")
    for model, _ in (
        load_model("tiny:llama", adapter=str(tmp_path / "adapter")),
        load_model(str(tmp_path / "adapter")),
    ):
        with torch.no_grad():
            assert torch.allclose(model(ids).logits, expected, atol=1e-6)
    plain, _ = load_model("tiny:llama")
    with torch.no_grad():
        assert not torch.allclose(plain(ids).logits, expected, atol=1e-3)


def test_adapter_flag_on_a_folder_that_is_no_adapter(tmp_path):
    with pytest.raises(TunelabError, match="not a PEFT adapter"):
        load_model("tiny:llama", adapter=str(tmp_path))
