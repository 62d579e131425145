"""DPO: offline preference optimisation on the pairs a reward model would train on, without one.

    tunelab dpo configs/dpo.yaml data.train=prefs.jsonl dpo.beta=0.1

loss = -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])
(or IPO's squared form). The reference is the policy with its adapter switched off, or a frozen
copy for full fine-tuning. Log-probs are summed over the answer tokens only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from tunelab.config.schema import DPOConfig
from tunelab.config.variants import pick
from tunelab.data.batch import LMBatch
from tunelab.data.read import read_dataset
from tunelab.data.render import IGNORE, Tokenized, render_chat, render_pair
from tunelab.data.sources import Shuffled
from tunelab.errors import TunelabError
from tunelab.losses.preference import DPO_LOSSES
from tunelab.models.by_length import by_length
from tunelab.models.forward import inner, sequence_logprobs
from tunelab.stages.common import prepare_model, render_options, split_holdout
from tunelab.train.loop import train


@dataclass
class DPOBatch:
    seqs: LMBatch  # (2B, T): rows 2i, 2i+1 are pair i's chosen and rejected; labels only on the answers

    @property
    def n_targets(self) -> int:
        return self.seqs.input_ids.shape[0] // 2

    def pair_lengths(self) -> list[int]:
        """(B,) real tokens of each pair's longer row."""
        return self.seqs.attention_mask.sum(dim=1).view(-1, 2).amax(dim=1).tolist()


def shared_head(chosen: Tokenized, rejected: Tokenized) -> int:
    """How many leading tokens the two rows share before either is trained on: the prompt."""
    n = 0
    for c, r, lc, lr in zip(chosen.input_ids, rejected.input_ids, chosen.labels, rejected.labels):
        if c != r or lc != IGNORE or lr != IGNORE:
            break
        n += 1
    return n


def collate_dpo(pairs: list[tuple[Tokenized, Tokenized]], pad_id: int) -> DPOBatch:
    """Each pair's chosen then rejected row; prompts left-padded so that every prompt ends in the same
    column P - 1 and every answer starts in column P, answers right-padded:

        [pad pad p0 p0 p0 | c0 c0 c0 pad]      pair 0, chosen
        [pad pad p0 p0 p0 | r0 r0 pad pad]     pair 0, rejected
        [p1 p1 p1 p1 p1   | c1 c1 c1 c1 ]      ...

    so a pair's two rows agree on columns < P and the prompt runs once per pair (models/forward.py
    `shared_prompts`). Position ids count real tokens only, so the log-probs are those of the rows alone.
    """
    heads = [shared_head(c, r) for c, r in pairs]
    P = max(heads)
    rows = [(P - head, row) for (c, r), head in zip(pairs, heads) for row in (c, r)]  # (left pad, row)
    T = max(pad + len(row.input_ids) for pad, row in rows)
    input_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), T), dtype=torch.long)
    position_ids = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (pad, row) in enumerate(rows):
        n = len(row.input_ids)
        input_ids[i, pad : pad + n] = torch.tensor(row.input_ids)
        labels[i, pad : pad + n] = torch.tensor(row.labels)
        attention_mask[i, pad : pad + n] = 1
        position_ids[i, pad : pad + n] = torch.arange(n)
    n_tokens = int(attention_mask.sum())
    return DPOBatch(LMBatch(input_ids, labels, attention_mask, position_ids, n_tokens))


def render_with_labels(tok, prompt, answer, opts) -> Tokenized:
    if isinstance(answer, list) or isinstance(prompt, list):
        head = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        tail = answer if isinstance(answer, list) else [{"role": "assistant", "content": answer}]
        return render_chat(tok, head + tail)
    return render_pair(tok, prompt, answer, opts)


def dpo_batches(
    pairs: list[tuple[Tokenized, Tokenized]],
    batch_size: int,
    pad_id: int,
    seed: int = 0,
    shuffle: bool = True,
    group_by_length: bool = False,
):
    """(chosen, rejected) pairs shuffled per epoch, `batch_size` pairs a micro-batch (`collate_dpo`).
    With `group_by_length`, pairs of similar length (the longer of the two rows) share a micro-batch."""
    lengths = [max(len(c.input_ids), len(r.input_ids)) for c, r in pairs] if group_by_length else None
    return Shuffled(
        pairs,
        batch_size,
        lambda chunk: collate_dpo(chunk, pad_id),
        seed,
        shuffle,
        lengths,
    )


def train_batches(pairs, tok, cfg: DPOConfig):
    """The training pairs' batch source: shuffled per epoch, grouped by length when data.group_by_length."""
    return dpo_batches(
        pairs, cfg.train.batch_size, tok.pad_token_id, cfg.seed, group_by_length=cfg.data.group_by_length
    )


def make_loss_fn(cfg: DPOConfig, ref_model=None):
    dpo_loss = pick(DPO_LOSSES, cfg.dpo.loss, "dpo.loss")

    def logps(model, batch: DPOBatch) -> Tensor:
        """(2B,) each row's summed answer log-prob; pairs of similar length share a forward (by_length)."""

        def run(rows: list[int] | None) -> Tensor:
            return sequence_logprobs(model, batch.seqs if rows is None else batch.seqs.select(rows))

        return by_length(model, batch.pair_lengths(), run, lambda pair: [2 * pair, 2 * pair + 1])

    def ref_logps(model, batch: DPOBatch) -> Tensor:
        with torch.no_grad():
            if ref_model is not None:
                # the copy follows the batch onto its device (a no-op once there)
                ref_model.to(batch.seqs.input_ids.device)
                return logps(ref_model, batch)
            with inner(model).disable_adapter():
                return logps(model, batch)

    def loss_fn(model, batch: DPOBatch) -> tuple[Tensor, dict]:
        policy = logps(model, batch)  # (2B,) chosen, rejected, chosen, ...
        ref = ref_logps(model, batch)  # (2B,)
        pc, pr = policy[0::2], policy[1::2]
        rc, rr = ref[0::2], ref[1::2]
        loss = dpo_loss(pc, pr, rc, rr, cfg.dpo.beta)
        margin = ((pc - rc) - (pr - rr)).detach()  # the chosen-over-rejected log-ratio margin
        return loss, {
            "margin": float(margin.sum()),
            "accuracy": float((margin > 0).sum()),
            "reward_chosen": float(cfg.dpo.beta * (pc - rc).detach().sum()),
            "reward_rejected": float(cfg.dpo.beta * (pr - rr).detach().sum()),
        }

    return loss_fn


def render_pairs(rows, tok, cfg: DPOConfig):
    opts = render_options(cfg)
    pairs = []
    for row in rows:
        chosen = render_with_labels(tok, row["prompt"], row["chosen"], opts)
        rejected = render_with_labels(tok, row["prompt"], row["rejected"], opts)
        if max(len(chosen.input_ids), len(rejected.input_ids)) > cfg.train.max_len:
            continue  # a cut answer would compare the wrong things
        if not chosen.n_trained or not rejected.n_trained:
            raise TunelabError("A preference answer has no tokens to score after rendering.")
        pairs.append((chosen, rejected))
    return pairs


def main(cfg: DPOConfig) -> Path:
    if not cfg.data.train:
        raise TunelabError("dpo needs preference pairs: set data.train=PATH (prompt, chosen, rejected).")
    if cfg.adapter in ("prompt", "prefix"):
        raise TunelabError("dpo trains with adapter=none, lora or dora.")
    pick(DPO_LOSSES, cfg.dpo.loss, "dpo.loss")
    rows = read_dataset(cfg.data.train, "preference")
    held_rows = read_dataset(cfg.data.eval, "preference") if cfg.data.eval else []
    if not held_rows:
        rows, held_rows = split_holdout(rows, cfg.data.eval_split, cfg.seed)
    model, tok = prepare_model(cfg)
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if cfg.adapter == "none" else None
    pairs = render_pairs(rows, tok, cfg)
    if not pairs:
        raise TunelabError(f"No pairs fit train.max_len={cfg.train.max_len}.")
    report = {
        "train pairs": f"{len(pairs)} of {len(rows)} (longer ones skipped)",
        "beta": cfg.dpo.beta,
        "loss": cfg.dpo.loss,
    }
    eval_batches = None
    if held_rows:
        eval_batches = dpo_batches(
            render_pairs(held_rows, tok, cfg), cfg.train.batch_size, tok.pad_token_id, shuffle=False
        ).all()
        report["eval pairs"] = len(held_rows)
    batches = train_batches(pairs, tok, cfg)
    return train(
        model,
        tok,
        batches,
        make_loss_fn(cfg, ref_model),
        cfg,
        stage="dpo",
        eval_batches=eval_batches,
        report=report,
        unit="pairs",
    )
