"""The benchmark's data, made here and the same for both sides: SFT rows, preference pairs, RL and eval prompts.

Rows are words drawn from a fixed list, so lengths are under control: SFT rows render (chat template
included) to 60-300 tokens, pairs to about that each.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).parent.parent

WORDS = (
    "the model learns a short answer from each example and the loss falls only on the completion "
    "tokens while the prompt is context for it and nothing more than that"
).split()


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def sft_rows(n: int, seed: int = 0, words: tuple[int, int, int, int] = (20, 100, 40, 200)) -> list[dict]:
    """Prompt of 20-100 words, completion of 40-200 (about one token a word; the template adds ~35)."""
    rng = random.Random(seed)
    lo_p, hi_p, lo_c, hi_c = words
    return [
        {"prompt": _text(rng, rng.randint(lo_p, hi_p)), "completion": _text(rng, rng.randint(lo_c, hi_c))}
        for _ in range(n)
    ]


def fixed_rows(n: int, tokens: int, seed: int = 0) -> list[dict]:
    """Rows of about `tokens` tokens each (the scaling row): a fifth prompt, the rest completion."""
    body = max(tokens - 35, 8)
    return sft_rows(n, seed, (body // 5, body // 5, body - body // 5, body - body // 5))


def preference_rows(n: int, seed: int = 0) -> list[dict]:
    """A prompt of 20-60 words and two answers of 40-200 words each."""
    rng = random.Random(seed)
    return [
        {
            "prompt": _text(rng, rng.randint(20, 60)),
            "chosen": _text(rng, rng.randint(40, 200)),
            "rejected": _text(rng, rng.randint(40, 200)),
        }
        for _ in range(n)
    ]


def rl_prompts() -> list[dict]:
    """The sums task of configs/rl.yaml (prompt + answer)."""
    path = ROOT / "examples" / "data" / "sum_prompts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


TOPICS = [
    "rivers",
    "bread",
    "the moon",
    "bicycles",
    "rain",
    "libraries",
    "bees",
    "glass",
    "maps",
    "tea",
    "snow",
]


def eval_prompts(n: int = 64) -> list[str]:
    """Half short-answer sums, half open questions that run to the token limit: a realistic evaluation mix."""
    sums = [row["prompt"] + " Answer with the number only." for row in rl_prompts()]
    opens = [
        f"Explain in a few sentences how {TOPICS[i % len(TOPICS)]} change over a year." for i in range(n)
    ]
    return [sums[i // 2] if i % 2 == 0 else opens[i // 2] for i in range(n)]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
