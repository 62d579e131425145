"""Batched generation for trying a model by hand, evaluation and sampling answers.

    texts = generate(model, tok, ["What is 2+2?"], max_new_tokens=64)   # chat template applied if any

Prompts are left-padded so every row's next token sits in the last column; temperature 0 is greedy.
A given seed makes sampling repeatable without touching the caller's random state (dropout masks
of a training run stay as they were).
"""

from __future__ import annotations

import torch

from tunelab.data.render import RenderOptions, prompt_text
from tunelab.models import precision
from tunelab.models.adapters import lora_merged
from tunelab.models.capability import inner, prompt_learning, sharded
from tunelab.models.forward import logprobs_of


def cache_argument(model) -> str:
    """transformers renamed `past_key_values` to `cache` (5.2x; the old name warns until 5.40)."""
    import inspect

    base = inner(model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def left_padded(tok, texts: list[str]):
    """Tokenise rendered prompts with left padding (each row's next token in the last column)."""
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = side


def cache_works(model) -> bool:
    """False for PEFT prompt tuning: through PeftModel.generate with the KV cache, its greedy answers differ
    from a step-by-step forward pass (transformers 5.x + peft 0.17+; tests/test_prompting.py pins it)."""
    is_prompt, n_virtual = prompt_learning(model)
    return not (is_prompt and n_virtual)


def _prompt_tuned_generate(model, enc, **kwargs):
    """Prompt tuning, cached and correct: the virtual tokens' embeddings go in front of the prompt's,
    and the base model generates from the embeddings (positions then count the virtual tokens, as in
    training). Returns the new tokens only: (B, new)."""
    base = model.get_base_model()
    ids, mask = enc["input_ids"], enc["attention_mask"]
    virtual = model.get_prompt(batch_size=ids.shape[0])  # (B, n_virtual, hidden)
    embeds = base.get_input_embeddings()(ids)  # (B, T, hidden)
    inputs_embeds = torch.cat([virtual.to(embeds.dtype), embeds], dim=1)
    mask = torch.cat([mask.new_ones(ids.shape[0], virtual.shape[1]), mask], dim=1)
    return base.generate(inputs_embeds=inputs_embeds, attention_mask=mask, **kwargs)


# generation-config options that change which token decoding picks; with any of them set, decoding is
# left to HF generate, which applies them
_GREEDY_CHANGERS = (
    "repetition_penalty",
    "encoder_repetition_penalty",
    "no_repeat_ngram_size",
    "bad_words_ids",
    "suppress_tokens",
    "begin_suppress_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "min_length",
    "min_new_tokens",
    "sequence_bias",
    "exponential_decay_length_penalty",
    "forced_decoder_ids",
    "min_p",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
)


def drops_finished_rows(model) -> bool:
    """Whether decoding may run in `decode_dropping_finished` (else HF generate does it)."""
    if not cache_works(model) or sharded(model):
        return False
    config = getattr(model, "generation_config", None)
    if config is None:
        return True
    neutral = (None, 0, 1.0, [], {})
    return all(getattr(config, name, None) in neutral for name in _GREEDY_CHANGERS)


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits outside the smallest set of tokens holding `top_p` of the mass set to -inf (HF's TopPLogitsWarper)."""
    if top_p >= 1.0:
        return logits
    ascending, order = logits.sort(dim=-1)
    tail = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p  # the least likely tokens, mass <= 1 - p
    tail[..., -1] = False  # the most likely token always stays
    return logits.masked_fill(tail.scatter(-1, order, tail), float("-inf"))


def draw(probs: torch.Tensor) -> torch.Tensor:
    """(B,) one token per row of `probs` (B, V), by inverting each row's cumulative distribution at a
    uniform draw from the global RNG: P(token i) = probs[i] / sum(probs), and a token of probability 0
    is never drawn. In float64, so that tokens of tiny probability keep their share; 10-40x faster
    than torch.multinomial on the CPU, whose exponential noise over the 49k vocabulary was a tenth of
    a sampling step (docs/decisions.md, "Sampling by the inverse CDF")."""
    cdf = probs.double().cumsum(dim=-1)  # (B, V) non-decreasing: a sum of non-negative terms
    total = cdf[:, -1:]  # (B, 1)
    u = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=probs.device) * total
    u = torch.minimum(u, total.nextafter(torch.zeros_like(total)))  # u < total: some cdf[i] > u
    return torch.searchsorted(cdf, u, right=True).squeeze(1)  # first i with cdf[i] > u: probs[i] > 0


@torch.no_grad()
def decode_dropping_finished(
    model,
    enc,
    max_new_tokens: int,
    eos: set[int],
    pad_id: int | None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    repeats: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoding that takes each row (and its KV cache) out of the batch once it has produced an EOS.

    `repeats` > 1 decodes that many continuations of every prompt in `enc` (GRPO's group): the prompts
    are run once and their KV cache is repeated, rows of a prompt being consecutive (B x repeats rows).
    Returns (new tokens, log-prob, entropy), each (B x repeats, steps run): tokens are pad after EOS; the log-prob
    of each drawn token and the entropy are those of softmax(logits / temperature) (at temperature 0:
    of the raw logits). HF generate keeps computing finished rows until the last one ends, so a batch
    of short and long answers paid for its longest answer in every row.
    Greedy (temperature 0) picks HF greedy's tokens (tests/test_fast_paths.py), up to float-rounding ties:
    a smaller batch can change a logit's last bits. Sampling draws from the global RNG (`draw`), only
    for live rows: a seed gives other samples than HF generate's, from the same distribution.
    (What it saves: docs/decisions.md, "Decoding drops finished rows".)
    """
    ids, mask = enc["input_ids"], enc["attention_mask"]
    B = ids.shape[0] * repeats
    new = torch.full((B, max_new_tokens), next(iter(eos)) if pad_id is None else pad_id, dtype=ids.dtype)
    logp = torch.zeros(B, max_new_tokens)
    entropy = torch.zeros(B, max_new_tokens)
    new, logp, entropy = new.to(ids.device), logp.to(ids.device), entropy.to(ids.device)
    if max_new_tokens == 0:
        return new, logp, entropy
    eos_ids = torch.tensor(sorted(eos), device=ids.device)
    name = cache_argument(model)
    positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)  # as generate: left padding does not count
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = getattr(out, name)
    logits = out.logits[:, -1].float()  # (live, V)
    if repeats > 1:  # the prompts' keys and values serve every continuation of them
        cache.batch_repeat_interleave(repeats)
        logits, mask, positions = (t.repeat_interleave(repeats, dim=0) for t in (logits, mask, positions))
    rows = torch.arange(B, device=ids.device)  # which original row each live row is
    next_position = positions[:, -1] + 1  # (live,)
    steps = 0
    for step in range(max_new_tokens):
        if temperature > 0:
            logits = logits / temperature
            token = draw(_top_p(logits, top_p).softmax(dim=-1))
        else:
            token = logits.argmax(dim=-1)
        new[rows, step] = token
        logp[rows, step], entropy[rows, step] = logprobs_of(logits, token, entropy=True)
        steps = step + 1
        live = ~torch.isin(token, eos_ids)
        if steps == max_new_tokens or not live.any():
            break
        if not live.all():  # finished rows leave the batch and the cache
            keep = live.nonzero().flatten()
            rows, token, mask, next_position = rows[keep], token[keep], mask[keep], next_position[keep]
            cache.batch_select_indices(keep)
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=next_position[:, None],
            use_cache=True,
            **{name: cache},
        )
        logits = out.logits[:, -1].float()
        next_position = next_position + 1
    return new[:, :steps], logp[:, :steps], entropy[:, :steps]


def eos_ids(model, tok) -> set[int]:
    """Every token id that ends an answer (the tokenizer's EOS and the model's generation config's)."""
    ids = {tok.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, list) else {configured}
    return {i for i in ids if i is not None}


@torch.no_grad()
def complete(
    model,
    tok,
    texts: list[str],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = 0,
) -> list[tuple[str, int, int]]:
    """(completion, prompt tokens, completion tokens) for already-rendered prompt texts, in one batch."""
    enc = left_padded(tok, texts).to(model.device)
    sampling = temperature > 0
    # LoRA merged while decoding: one matmul per adapted layer instead of three (models/adapters.py)
    with (
        torch.random.fork_rng(devices=[], enabled=seed is not None),
        lora_merged(model),
        precision.compute(),
        precision.weights_cast_once(model),
        precision.linears_prepacked(model),
    ):
        if seed is not None:
            torch.manual_seed(seed)
        options = dict(
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=top_p if sampling else None,
            top_k=None,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        if not sampling and tok.eos_token_id is not None and drops_finished_rows(model):
            new_tokens = decode_dropping_finished(
                model, enc, max_new_tokens, {tok.eos_token_id}, tok.pad_token_id
            )[0]
        elif cache_works(model):
            new_tokens = model.generate(**enc, **options)[:, enc["input_ids"].shape[1] :]  # (B, new)
        else:
            new_tokens = _prompt_tuned_generate(model, enc, **options)
    ends = eos_ids(model, tok)
    results = []
    for row, prompt_mask in zip(new_tokens.tolist(), enc["attention_mask"], strict=True):
        n_new = next((k + 1 for k, t in enumerate(row) if t in ends), len(row))  # EOS counted, padding not
        text = tok.decode(row[:n_new], skip_special_tokens=True).strip()
        results.append((text, int(prompt_mask.sum()), n_new))
    return results


def generate(
    model,
    tok,
    prompts: list[str],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    opts: RenderOptions | None = None,
    seed: int | None = 0,
) -> list[str]:
    """Completions of `prompts`, rendered as in training (chat template, or prompt + separator)."""
    opts = opts or RenderOptions()
    texts = [prompt_text(tok, p, opts) for p in prompts]
    done = complete(
        model, tok, texts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
    )
    return [text for text, _, _ in done]
