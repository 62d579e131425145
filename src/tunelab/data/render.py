"""Turn rows into token ids and labels, so that loss falls only where the model should learn.

    item = render_row(tok, {"messages": [...]}, RenderOptions())   # chat template, assistant turns trained
    item = render_row(tok, {"prompt": p, "completion": c}, opts)   # chat template, or prompt + SEP + completion + EOS

How the labels are found: the whole text is rendered first (with the tokenizer's own chat template, or
as `instruction + prompt + separator + completion`), tokenised once with character offsets, and a token
is trained when it starts inside a span the model must produce: each assistant turn including its
end-of-turn token, or the completion followed by EOS. Tokenising the whole text once means the ids
are exactly those `tok.apply_chat_template(messages)` gives; the spans come from rendering the
conversation up to each assistant turn, which works for any template that renders a conversation as
a prefix of its continuation (ChatML, Llama 3, Gemma, Mistral ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.errors import TunelabError

IGNORE = -100  # label of a position that carries no loss (prompt, padding)


@dataclass
class RenderOptions:
    separator: str = "\n### Answer:\n"  # prompt/completion separator for models without a chat template
    instruction: str | None = None  # fixed instruction before every input (the zero-shot prompt recipe)
    system: str | None = None  # system message for chat-template models
    use_chat_template: bool | None = None  # None: use it when the tokenizer has one


@dataclass
class Tokenized:
    """One rendered row: ids and labels of the same length (labels = ids where trained, else -100)."""

    input_ids: list[int]
    labels: list[int]
    text: str = ""
    spans: list[tuple[int, int]] = field(default_factory=list)  # trained character spans of `text`

    @property
    def n_trained(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def has_chat_template(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


def _chat_text(tok, messages, add_generation_prompt: bool = False) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def chat_spans(tok, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the character span of every assistant turn (end-of-turn token included)."""
    text = _chat_text(tok, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _chat_text(tok, messages[:i], add_generation_prompt=True) if i else ""
        upto = _chat_text(tok, messages[: i + 1])
        if not (upto.startswith(before) and text.startswith(upto)):
            raise TunelabError(
                "This model's chat template does not render a conversation as a prefix of its continuation, "
                "so the assistant turns cannot be located for loss masking. Use data.separator with "
                "prompt/completion pairs, or a model whose template is prefix-stable."
            )
        end = len(upto.rstrip())  # the newline after the end-of-turn token belongs to the next turn
        spans.append((len(before), end))
    return text, spans


def _tokenize_with_spans(tok, text: str, spans: list[tuple[int, int]], eos_trained: bool) -> Tokenized:
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    for k, (start, _end) in enumerate(offsets):
        if any(lo <= start < hi for lo, hi in spans):
            labels[k] = ids[k]
    if eos_trained:
        ids = [*ids, tok.eos_token_id]
        labels = [*labels, tok.eos_token_id]
    return Tokenized(list(ids), labels, text, spans)


def render_chat(tok, messages: list[dict]) -> Tokenized:
    """Chat with the tokenizer's template; every assistant turn and its end-of-turn token trained."""
    text, spans = chat_spans(tok, messages)
    return _tokenize_with_spans(tok, text, spans, eos_trained=False)


def pair_messages(prompt: str, completion: str | None, opts: RenderOptions, system: str | None = None):
    user = f"{opts.instruction}\n\n{prompt}" if opts.instruction else prompt
    messages = []
    if system or opts.system:
        messages.append({"role": "system", "content": system or opts.system})
    messages.append({"role": "user", "content": user})
    if completion is not None:
        messages.append({"role": "assistant", "content": completion})
    return messages


def prompt_text(tok, prompt: str, opts: RenderOptions, system: str | None = None) -> str:
    """What the model sees before it answers: the same rendering as training, up to the answer."""
    if _uses_template(tok, opts):
        return _chat_text(tok, pair_messages(prompt, None, opts, system), add_generation_prompt=True)
    instruction = f"{opts.instruction}\n\n" if opts.instruction else ""
    return f"{instruction}{prompt}{opts.separator}"


def _uses_template(tok, opts: RenderOptions) -> bool:
    return has_chat_template(tok) if opts.use_chat_template is None else opts.use_chat_template


def render_pair(
    tok, prompt: str, completion: str, opts: RenderOptions, system: str | None = None
) -> Tokenized:
    """X -> Y: chat template if the model has one, else `instruction + prompt + SEP + completion + EOS`."""
    if _uses_template(tok, opts):
        return render_chat(tok, pair_messages(prompt, completion, opts, system))
    head = prompt_text(tok, prompt, opts)
    text = head + completion
    return _tokenize_with_spans(tok, text, [(len(head), len(text))], eos_trained=True)


def render_text(tok, text: str) -> Tokenized:
    """Raw text for pre-training: every token trained, EOS appended as the document boundary."""
    ids = [*tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    return Tokenized(ids, list(ids), text, [(0, len(text))])


def render_answer(tok, prompt, answer, opts: RenderOptions) -> Tokenized:
    """A prompt and one answer, rendered exactly as SFT renders a row (chat template, or prompt + SEP +
    answer + EOS), the answer's tokens trained: what the reward model scores and DPO compares. Either may
    be a list of chat turns; without a prompt the answer is plain text."""
    if isinstance(answer, list):  # a chat continuation, or a whole chat
        head = (
            prompt if isinstance(prompt, list) else ([{"role": "user", "content": prompt}] if prompt else [])
        )
        return render_chat(tok, head + answer)
    if isinstance(prompt, list):
        return render_chat(tok, prompt + [{"role": "assistant", "content": answer}])
    if not prompt:
        return render_text(tok, answer)
    return render_pair(tok, prompt, answer, opts)


def render_row(tok, row: dict, opts: RenderOptions) -> Tokenized:
    """Any normalised row of kind text, pairs or chat."""
    if "messages" in row:
        if not has_chat_template(tok):
            raise TunelabError(
                "Chat data needs a model with a chat template; this tokenizer has none. Use prompt/completion pairs instead."
            )
        return render_chat(tok, row["messages"])
    if "completion" in row:
        return render_pair(tok, row["prompt"], row["completion"], opts, row.get("system"))
    if "text" in row:
        return render_text(tok, row["text"])
    raise TunelabError(
        f"Cannot render a row with fields {sorted(row)}: expected text, prompt/completion or messages."
    )


def fit_length(item: Tokenized, max_len: int, overlong: str) -> Tokenized | None:
    """Apply the over-long policy: None when the row is dropped (or nothing trained would remain)."""
    if len(item.input_ids) <= max_len:
        return item
    if overlong == "drop":
        return None
    cut = Tokenized(item.input_ids[:max_len], item.labels[:max_len], item.text, item.spans)
    return cut if cut.n_trained else None
