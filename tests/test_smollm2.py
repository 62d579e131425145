"""The embedded real model, SmolLM2-135M-Instruct: conversion, chat rendering and a real answer.

The first test to ask for it converts the GGUF to safetensors in the cache (~30-40 s, once per machine).
"""

import pytest
import torch

from tunelab.data.render import IGNORE, render_chat
from tunelab.models.load import embedded_gguf, load_model

pytestmark = pytest.mark.slow

CHATS = [
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, how can I help?"}],
    [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "cat"},
        {"role": "assistant", "content": "chat"},
        {"role": "user", "content": "dog, please"},
        {"role": "assistant", "content": " chien\n"},
    ],
]


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")


def test_it_is_the_model_design_md_describes(smollm2):
    model, tok = smollm2
    c = model.config
    assert (c.model_type, c.num_hidden_layers, c.hidden_size, c.vocab_size) == ("llama", 30, 576, 49152)
    assert c.tie_word_embeddings and tok.eos_token == "<|im_end|>"


@pytest.mark.parametrize("chat", CHATS)
def test_rendering_matches_its_own_chat_template_and_masks_assistant_turns(smollm2, chat):
    _, tok = smollm2
    item = render_chat(tok, chat)
    assert item.input_ids == tok.apply_chat_template(chat)["input_ids"]
    trained = tok.decode([t for t, lab in zip(item.input_ids, item.labels) if lab != IGNORE])
    assert trained == "".join(m["content"] + "<|im_end|>" for m in chat if m["role"] == "assistant")


def test_it_answers_a_question(smollm2):
    from tunelab.models.generation import generate

    model, tok = smollm2
    (answer,) = generate(model, tok, ["What is the capital of France?"], max_new_tokens=24)
    assert "Paris" in answer


def test_gguf_file_loads_to_the_same_weights_as_the_converted_cache(smollm2):
    converted, tok = smollm2
    from_gguf, _ = load_model(str(embedded_gguf("smollm2-135m")))
    ids = torch.tensor([tok("The quick brown fox jumps over the lazy dog.")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(converted(ids).logits, from_gguf(ids).logits, atol=1e-4)


def test_lora_sft_moves_its_answers_to_the_targets(smollm2, tmp_path):
    """A few LoRA steps on the embedded extraction task: from free-form JSON to the exact target format."""
    from conftest import write_jsonl

    from tunelab.config import load_config
    from tunelab.config.schema import SFTConfig
    from tunelab.models.generation import generate
    from tunelab.stages import sft
    from tunelab.tasks.extract import exact_match, make_rows

    rows = make_rows(72, seed=1)
    train, held_out = rows[:64], rows[64:]
    model, tok = smollm2
    prompts = [r["prompt"] for r in held_out]
    before = sum(
        exact_match(a, r["completion"])
        for a, r in zip(generate(model, tok, prompts, max_new_tokens=40), held_out)
    )
    cfg = load_config(
        SFTConfig,
        None,
        [
            "model=smollm2-135m",
            f"data.train={write_jsonl(tmp_path / 'train.jsonl', train)}",
            "adapter=lora",
            "train.max_steps=6",
            "train.batch_size=4",
            "train.lr=2e-3",
            "train.warmup=0",
            "data.pack=true",
            "train.max_len=256",
            f"out={tmp_path / 'run'}",
        ],
    )
    run = sft.main(cfg)
    tuned, _ = load_model("smollm2-135m", adapter=str(run / "final"))
    answers = generate(tuned, tok, prompts, max_new_tokens=40)
    after = sum(exact_match(a, r["completion"]) for a, r in zip(answers, held_out))
    assert before <= 2 and after >= 6, (before, after, answers)


def test_eval_on_the_real_model_with_few_shot_in_its_context(cli, tmp_path):
    import json

    out = tmp_path / "ev"
    code, stdout, err = cli(
        "eval",
        "model=smollm2-135m",
        "task=extract",
        "strategy=[zero_shot,few_shot]",
        "eval.limit=8",
        f"out={out}",
    )
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    few = results["results"][1]
    assert few["strategy"] == "few_shot" and few["shots"] == 4  # 8192-token context: every example fits
    assert few["tokens_per_example"] > results["results"][0]["tokens_per_example"] + 4 * 40
    rows = [json.loads(line) for line in (out / "outputs" / "few_shot.jsonl").read_text().splitlines()]
    assert (
        sum(r["answer"] != "" for r in rows) >= 6
    )  # it answers in JSON, whether or not the fields are right
