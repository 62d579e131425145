"""Loss masking, checked against token ids worked out independently, and the over-long policy."""

import pytest

from tunelab.data.render import (
    IGNORE,
    RenderOptions,
    fit_length,
    render_chat,
    render_pair,
    render_row,
    render_text,
)

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And two plus two?"},
    {"role": "assistant", "content": "4, of course"},
]


def trained_runs(item):
    """The trained positions as runs of consecutive token ids."""
    runs, cur = [], []
    for token_id, label in zip(item.input_ids, item.labels):
        if label != IGNORE:
            assert label == token_id  # labels are the ids themselves (shifted in the loss)
            cur.append(token_id)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


def test_multi_turn_chat_trains_exactly_the_assistant_turns_with_end_of_turn(tiny_llama):
    _, tok = tiny_llama
    item = render_chat(tok, CHAT)
    # by hand: ChatML puts each assistant turn as "<|im_start|>assistant\n" + content + "<|im_end|>"
    end = tok.convert_tokens_to_ids("<|im_end|>")
    expected = [
        tok(m["content"], add_special_tokens=False)["input_ids"] + [end]
        for m in CHAT
        if m["role"] == "assistant"
    ]
    assert trained_runs(item) == expected
    # and each run starts right after the assistant header
    header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    starts = [
        k for k in range(1, len(item.labels)) if item.labels[k] != IGNORE and item.labels[k - 1] == IGNORE
    ]
    for k in starts:
        assert item.input_ids[k - len(header) : k] == header


def test_rendered_chat_equals_the_tokenizers_own_chat_template(tiny_llama):
    _, tok = tiny_llama
    assert render_chat(tok, CHAT).input_ids == tok.apply_chat_template(CHAT)["input_ids"]


def test_sep_format_trains_exactly_the_completion_and_eos(tiny_gpt2):
    _, tok = tiny_gpt2
    assert not tok.chat_template  # a base model
    opts = RenderOptions(separator=" [SEP] ", instruction="Answer the question.")
    item = render_pair(tok, "What is two plus two?", "4", opts)
    assert item.text == "Answer the question.\n\nWhat is two plus two? [SEP] 4"
    assert trained_runs(item) == [tok("4", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    assert item.input_ids[-1] == tok.eos_token_id and item.labels[-1] == tok.eos_token_id
    prompt_ids = tok("Answer the question.\n\nWhat is two plus two? [SEP]", add_special_tokens=False)[
        "input_ids"
    ]
    assert item.input_ids[: len(prompt_ids)] == prompt_ids and set(item.labels[: len(prompt_ids)]) == {IGNORE}


def test_pairs_on_a_chat_model_use_the_template_and_the_instruction(tiny_llama):
    _, tok = tiny_llama
    item = render_row(
        tok, {"prompt": "cat", "completion": "chat"}, RenderOptions(instruction="Translate to French.")
    )
    assert "<|im_start|>user\nTranslate to French.\n\ncat<|im_end|>" in item.text
    assert tok.decode([t for t, lab in zip(item.input_ids, item.labels) if lab != IGNORE]) == "chat<|im_end|>"


def test_pad_equal_to_eos_does_not_hide_the_trained_eos(tiny_llama):
    _, tok = tiny_llama
    assert tok.pad_token_id == tok.eos_token_id  # the common trap: labels must not be derived from the pad id
    item = render_chat(tok, CHAT[:3])
    assert item.labels[-2] == tok.eos_token_id  # "<|im_end|>" trained; the final "\n" is not
    assert item.labels[-1] == IGNORE


def test_text_rows_train_every_token_and_end_with_eos(tiny_llama):
    _, tok = tiny_llama
    item = render_text(tok, "The quick brown fox")
    assert item.labels == item.input_ids and item.input_ids[-1] == tok.eos_token_id


def test_overlong_rows_truncate_or_drop_explicitly(tiny_gpt2):
    _, tok = tiny_gpt2
    item = render_pair(tok, "short prompt", "a much longer completion " * 10, RenderOptions())
    n = len(item.input_ids)
    assert fit_length(item, n, "drop") is item
    assert fit_length(item, n - 1, "drop") is None
    cut = fit_length(item, n - 5, "truncate")
    assert cut.input_ids == item.input_ids[: n - 5] and cut.labels == item.labels[: n - 5]
    prompt_only = len(tok("short prompt" + RenderOptions().separator)["input_ids"])
    assert fit_length(item, prompt_only, "truncate") is None  # nothing trained would remain: dropped


@pytest.mark.parametrize(
    "kind_row", [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
)
def test_chat_rows_need_a_chat_template(tiny_gpt2, kind_row):
    from tunelab.errors import TunelabError

    with pytest.raises(TunelabError, match="chat template"):
        render_row(tiny_gpt2[1], kind_row, RenderOptions())
