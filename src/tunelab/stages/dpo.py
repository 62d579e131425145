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
from tunelab.data.layout import Layout, lay_out, pair_segment
from tunelab.data.pairs import pair_batches
from tunelab.data.read import read_dataset
from tunelab.data.render import Tokenized, render_answer
from tunelab.errors import TunelabError
from tunelab.losses.preference import DPO_LOSSES
from tunelab.models.capability import attends_per_view, inner, takes_4d_mask
from tunelab.models.forward import sequence_logprobs
from tunelab.stages.common import in_precision, prepare_model, render_options, split_holdout
from tunelab.train.loop import train


@dataclass
class DPOBatch:
    seqs: Layout  # continuation 2i is pair i's chosen answer, 2i + 1 its rejected; targets: the answers

    @property
    def n_targets(self) -> int:
        return self.seqs.n_seqs // 2


def collate_dpo(
    pairs: list[tuple[Tokenized, Tokenized]],
    pad_id: int,
    packed: bool = False,
    max_len: int | None = None,
    views: bool = False,
) -> DPOBatch:
    """Each pair one segment (data/layout.py `pair_segment`): its prompt once, then the chosen and the
    rejected answer; packed (rows of at most max_len, or longer with views) or padded, as the stage decided."""
    segments = [pair_segment(c.input_ids, r.input_ids, c.labels, r.labels) for c, r in pairs]
    return DPOBatch(lay_out(segments, pad_id, packed=packed, max_len=max_len, views=views))


def train_batches(
    pairs, tok, cfg: DPOConfig, packed: bool = False, training: bool = True, views: bool = False
):
    """The (chosen, rejected) pairs' batch source: shuffled per epoch and grouped by length
    (data.group_by_length) for training, in order for evaluation; packed when the model takes a 4-D
    mask (each prompt then runs once for both answers)."""
    return pair_batches(
        pairs,
        cfg.train.batch_size,
        lambda chunk: collate_dpo(chunk, tok.pad_token_id, packed, cfg.train.max_len, views),
        lambda pair: max(len(pair[0].input_ids), len(pair[1].input_ids)),
        cfg.seed,
        shuffle=training,
        group_by_length=training and cfg.data.group_by_length,
    )


def make_loss_fn(cfg: DPOConfig, ref_model=None):
    dpo_loss = pick(DPO_LOSSES, cfg.dpo.loss, "dpo.loss")

    def logps(model, batch: DPOBatch) -> Tensor:
        """(2B,) each answer's summed log-prob: chosen, rejected, chosen, ..."""
        return sequence_logprobs(model, batch.seqs)

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
        chosen = render_answer(tok, row["prompt"], row["chosen"], opts)
        rejected = render_answer(tok, row["prompt"], row["rejected"], opts)
        if max(len(chosen.input_ids), len(rejected.input_ids)) > cfg.train.max_len:
            continue  # a cut answer would compare the wrong things
        if not chosen.n_trained or not rejected.n_trained:
            raise TunelabError("A preference answer has no tokens to score after rendering.")
        pairs.append((chosen, rejected))
    return pairs


@in_precision
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
    packed, views = takes_4d_mask(model), attends_per_view(model)
    eval_batches = None
    if held_rows:
        eval_batches = train_batches(
            render_pairs(held_rows, tok, cfg), tok, cfg, packed, training=False, views=views
        ).all()
        report["eval pairs"] = len(held_rows)
    batches = train_batches(pairs, tok, cfg, packed, views=views)
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
