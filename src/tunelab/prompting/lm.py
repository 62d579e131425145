"""The model side of prompting: conversations in, replies out, in batches, with token counts.

    lm = ChatModel(model, tok, batch_size=16)
    lm.complete([[{"role": "user", "content": "2+2?"}]], max_new_tokens=8)   # -> [Reply("4", 31, 2)]
    lm.count(conversation)                                                    # prompt tokens

A conversation is a list of {role, content} turns ending with a user turn. Chat models see it through
their chat template; base models as plain text, `system + user + SEP + assistant + blank line + user + SEP`,
so a one-turn conversation is exactly the prompt that training renders (tunelab.data.render.prompt_text).
Prompts are sorted by length before batching (less padding) and left-padded; greedy answers do not
depend on the batch (tests/test_prompting.py checks it).

Anything with `complete` and `count` is a model here: tests use scripted fakes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tunelab.data.render import RenderOptions, has_chat_template

Conversation = list[dict]


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int


class LM(Protocol):
    max_context: int

    def complete(
        self,
        conversations: list[Conversation],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> list[Reply]: ...

    def count(self, conversation: Conversation) -> int: ...


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


def with_options(conversation: Conversation, opts: RenderOptions, chat: bool) -> Conversation:
    """The run's fixed instruction (first user turn) and, for chat models, system message, as in training."""
    turns = [dict(t) for t in conversation]
    if opts.instruction:
        first = next(t for t in turns if t["role"] == "user")
        first["content"] = f"{opts.instruction}\n\n{first['content']}"
    if chat and opts.system and not any(t["role"] == "system" for t in turns):
        turns.insert(0, {"role": "system", "content": opts.system})
    return turns


def plain_text(conversation: Conversation, separator: str) -> str:
    """A conversation for a model without a chat template (ends ready for the answer)."""
    out = []
    for turn in conversation:
        if turn["role"] == "system":
            out.append(f"{turn['content']}\n\n")
        elif turn["role"] == "user":
            out.append(f"{turn['content']}{separator}")
        else:
            out.append(f"{turn['content']}\n\n")
    return "".join(out)


class ChatModel:
    """A Hugging Face causal LM (or PEFT model) behind the LM interface."""

    def __init__(self, model, tok, *, opts: RenderOptions | None = None, batch_size: int = 16):
        self.model, self.tok = model.eval(), tok
        self.opts = opts or RenderOptions()
        self.batch_size = batch_size
        config = model.config
        self.max_context = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", 2048
        )
        self.chat = (
            has_chat_template(tok) if self.opts.use_chat_template is None else self.opts.use_chat_template
        )

    def render(self, conversation: Conversation) -> str:
        turns = with_options(conversation, self.opts, self.chat)
        if self.chat:
            return self.tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return plain_text(turns, self.opts.separator)

    def count(self, conversation: Conversation) -> int:
        return len(self.tok(self.render(conversation), add_special_tokens=False)["input_ids"])

    def _cut(self, text: str) -> str:
        # a base model runs on past its answer into the next "question"; keep what comes before it
        stop = self.opts.separator.strip()
        return text.split(stop)[0].strip() if stop and not self.chat else text

    def complete(
        self,
        conversations: list[Conversation],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> list[Reply]:
        from tunelab.models.generation import complete

        texts = [self.render(c) for c in conversations]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths batch together
        replies: list[Reply | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            done = complete(
                self.model,
                self.tok,
                [texts[i] for i in chunk],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                seed=seed + start,
            )
            for i, (text, n_prompt, n_new) in zip(chunk, done, strict=True):
                replies[i] = Reply(self._cut(text), n_prompt, n_new)
        return replies  # type: ignore[return-value]
