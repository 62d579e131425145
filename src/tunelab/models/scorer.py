"""A trained reward model as a scorer of answers (its uses, select and best-of-n, are in tunelab/rank.py).

    from tunelab.models.scorer import RewardScorer
    rm = RewardScorer("runs/rm/final")
    rm.score([("What is 2+2?", "4"), ("What is 2+2?", "5")])      # -> [r1, r2]; higher is better

Answers are rendered exactly as the reward model saw them in training (chat template, or prompt +
separator + answer + EOS); scores do not depend on batch size or padding side.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunelab.data.render import RenderOptions, render_answer
from tunelab.models import precision

Item = str | tuple[str, str]  # a rendered text, or (prompt, answer)


def render_options_for(path: str) -> RenderOptions:
    """The render options a tunelab run trained with (tunelab.json next to the weights), else defaults."""
    meta = Path(path) / "tunelab.json"
    if meta.is_file():
        render = json.loads(meta.read_text()).get("render", {})
        return RenderOptions(**render)
    return RenderOptions()


class RewardScorer:
    def __init__(
        self, path: str, *, batch_size: int = 16, model=None, tok=None, opts: RenderOptions | None = None
    ):
        from tunelab.models.load import load_model

        if model is None:
            model, tok = load_model(path, head="reward")
        self.model, self.tok, self.batch_size = model.eval(), tok, batch_size
        self.opts = opts or render_options_for(path)

    def ids(self, item: Item) -> list[int]:
        if isinstance(item, str):
            return self.tok(item, add_special_tokens=False)["input_ids"]
        prompt, answer = item
        return render_answer(self.tok, prompt, answer, self.opts).input_ids

    @torch.no_grad()
    def score(self, items: list[Item]) -> list[float]:
        from tunelab.data.layout import IGNORE, Segment, lay_out
        from tunelab.models.reward import layout_rewards

        out: list[float] = []
        for start in range(0, len(items), self.batch_size):
            seqs = [self.ids(it) for it in items[start : start + self.batch_size]]
            segments = [Segment([], [s], [[IGNORE] * len(s)]) for s in seqs]  # each answer on its own
            batch = lay_out(segments, self.tok.pad_token_id, packed=False)
            with precision.compute():  # the precision of the command in use (models/precision.py)
                out += layout_rewards(self.model, batch.to(self.model.device)).tolist()
        return out


def score(rm: str | RewardScorer, items: list[Item], batch_size: int = 16) -> list[float]:
    """Rewards for texts or (prompt, answer) pairs: `score("runs/rm/final", items)`."""
    scorer = rm if isinstance(rm, RewardScorer) else RewardScorer(rm, batch_size=batch_size)
    return scorer.score(items)
