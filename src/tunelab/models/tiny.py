"""Tiny random models and a tiny tokenizer, built locally for tests and quick trials.

    model, tok = load_model("tiny:llama")     # 2 layers, hidden 64, ChatML chat template
    model, tok = load_model("tiny:gpt2")      # a base model: no chat template (prompt + SEP + completion)

The tokenizer is a byte-level BPE trained in milliseconds on a fixed built-in text, so every string
can be encoded and the result is the same on every machine. Same seed -> same weights.
"""

from __future__ import annotations

import functools

# Mirrors SmolLM2's ChatML template, including its default system message.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A model learns to answer questions about the world.
Question: what is the capital of France? Answer: Paris. Question: what is two plus two? Answer: 4.
Translate to French: cat -> chat, dog -> chien, house -> maison. Extract the name, city and age.
{"name": "Alice", "city": "London", "age": 31} {"name": "Bob", "city": "Berlin", "age": 45}
You are a helpful assistant. The user asks and the assistant answers step by step, then gives
the final answer. Reflection: check the answer, find the error, fix it. 0123456789 + - * / = ( ) [ ]
"""

ARCHS = {
    "llama": ("LlamaConfig", True),
    "qwen2": ("Qwen2Config", True),
    "gpt2": ("GPT2Config", False),  # a base model: no chat template
}


@functools.lru_cache(maxsize=4)
def _tokenizer_json(chat: bool) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if chat else ["<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(chat: bool = True):
    """A fresh PreTrainedTokenizerFast: pad = eos (as in many real models), ChatML template if `chat`."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    eos = "<|im_end|>" if chat else "<|endoftext|>"
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(chat)),
        eos_token=eos,
        pad_token=eos,
        bos_token=None,
        unk_token=None,
        model_max_length=512,
    )
    if chat:
        tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_model(arch: str = "llama", seed: int = 0, dtype=None, head: str = "lm"):
    """(model, tokenizer) for a tiny random `arch` in {llama, qwen2, gpt2}; same seed -> same weights.

    head="reward" gives the same body with a scalar head (`XForSequenceClassification`, 1 label).
    """
    import torch
    import transformers

    config_name, chat = ARCHS[arch]
    tok = tiny_tokenizer(chat)
    common = dict(
        vocab_size=len(tok),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
        initializer_range=0.2,  # logits spread like a trained model's, so that adapters can move them
    )
    if arch == "gpt2":
        config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, **common)
    else:
        config = getattr(transformers, config_name)(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            **common,
        )
    auto = (
        transformers.AutoModelForCausalLM if head == "lm" else transformers.AutoModelForSequenceClassification
    )
    if head != "lm":
        config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config)
    if dtype is not None:
        model = model.to(dtype)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval(), tok
