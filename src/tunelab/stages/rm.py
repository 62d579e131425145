"""Reward model: Bradley-Terry on preference pairs. The LM head is replaced by a scalar head read at
the last real token; full fine-tuning or LoRA (the head always trains).

    tunelab rm configs/rm.yaml data.train=prefs.jsonl

After training, held-out pairs give accuracy, mean margin and a calibration plot
(predicted P(x > y) against how often x really was the chosen one), and the quality gate
(models/rm_gate.py): accuracy against null baselines on the same pairs, saved as gate.json.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from tunelab.config.schema import RMConfig
from tunelab.data.pairs import PairBatch, collate_pairs, pair_batches, render_preference
from tunelab.data.read import read_dataset
from tunelab.errors import TunelabError
from tunelab.losses.preference import bradley_terry_loss
from tunelab.models import rm_gate
from tunelab.models.capability import attends_per_view, takes_4d_mask
from tunelab.models.reward import layout_rewards
from tunelab.stages.common import in_precision, prepare_model, render_options, split_holdout
from tunelab.train.dist import main_process
from tunelab.train.loop import train
from tunelab.train.run_folder import trained_now


def make_loss_fn(center: float = 0.0):
    def loss_fn(model, batch: PairBatch) -> tuple[Tensor, dict]:
        scores = layout_rewards(model, batch.seqs)  # (2B,) chosen, rejected, chosen, ...
        r_chosen, r_rejected = scores[0::2], scores[1::2]  # (B,), (B,)
        loss = bradley_terry_loss(r_chosen, r_rejected, batch.margin, batch.weight, center)
        diff = (r_chosen - r_rejected).detach()
        return loss, {"accuracy": float((diff > 0).sum()), "margin": float(diff.sum())}

    return loss_fn


def render_pairs(rows, tok, cfg: RMConfig):
    opts = render_options(cfg)
    pairs, n_cut = [], 0
    for row in rows:
        pair, cut = render_preference(tok, row, opts, cfg.train.max_len)
        if cut and cfg.data.overlong == "drop":
            continue
        n_cut += cut
        pairs.append(pair)
    return pairs, n_cut


def train_batches(
    pairs, tok, cfg: RMConfig, packed: bool = False, training: bool = True, views: bool = False
):
    """The pairs' batch source: shuffled per epoch and grouped by length (data.group_by_length) for
    training, in order for evaluation; packed when the model takes a 4-D mask (a pair's prompt runs once),
    with `views`, its attention may run per continuation (data/layout.py `lay_out`)."""
    return pair_batches(
        pairs,
        cfg.train.batch_size,
        lambda chunk: collate_pairs(chunk, tok.pad_token_id, packed, cfg.train.max_len, views),
        lambda pair: max(len(pair.chosen), len(pair.rejected)),
        cfg.seed,
        shuffle=training,
        group_by_length=training and cfg.data.group_by_length,
    )


@torch.no_grad()
def calibration(model, batches: list[PairBatch], seed: int = 0, bins: int = 10) -> dict:
    """Reliability of P(x > y) = sigmoid(r_x - r_y) on held-out pairs, each shown in a random order."""
    model.eval()
    rng = random.Random(seed)
    predicted, observed = [], []
    for batch in batches:
        scores = layout_rewards(model, batch.seqs)  # (2B,)
        r_chosen, r_rejected = scores[0::2], scores[1::2]
        for rc, rr in zip(r_chosen.tolist(), r_rejected.tolist(), strict=True):
            first_is_chosen = rng.random() < 0.5
            diff = rc - rr if first_is_chosen else rr - rc
            predicted.append(float(torch.sigmoid(torch.tensor(diff))))
            observed.append(1.0 if first_is_chosen else 0.0)
    table = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, p in enumerate(predicted) if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        if idx:
            table.append(
                {
                    "bin": [lo, hi],
                    "n": len(idx),
                    "predicted": sum(predicted[i] for i in idx) / len(idx),
                    "observed": sum(observed[i] for i in idx) / len(idx),
                }
            )
    ece = sum(row["n"] * abs(row["predicted"] - row["observed"]) for row in table) / max(1, len(predicted))
    return {"pairs": len(predicted), "ece": ece, "bins": table}


def plot_calibration(calib: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    xs = [row["predicted"] for row in calib["bins"]]
    ys = [row["observed"] for row in calib["bins"]]
    ax.plot(xs, ys, "o-", label=f"reward model (ECE {calib['ece']:.3f})")
    ax.set_xlabel("predicted P(x > y)")
    ax.set_ylabel("observed share x chosen")
    ax.set_title(f"calibration, {calib['pairs']} held-out pairs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@in_precision
def main(cfg: RMConfig) -> Path:
    if not cfg.data.train:
        raise TunelabError("rm needs preference pairs: set data.train=PATH (prompt, chosen, rejected).")
    if cfg.data.pack:
        raise TunelabError("data.pack does not apply to reward models: each answer is scored on its own.")
    rows = read_dataset(cfg.data.train, "preference")
    held_rows = read_dataset(cfg.data.eval, "preference") if cfg.data.eval else []
    if not held_rows:
        rows, held_rows = split_holdout(rows, cfg.data.eval_split, cfg.seed)
    model, tok = prepare_model(cfg, head="reward")
    pairs, n_cut = render_pairs(rows, tok, cfg)
    if not pairs:
        raise TunelabError(f"No preference pairs left after fitting to train.max_len={cfg.train.max_len}.")
    report = {"train pairs": f"{len(pairs)} ({n_cut} cut to the last {cfg.train.max_len} tokens)"}
    packed, views = takes_4d_mask(model), attends_per_view(model)
    eval_batches = None
    if held_rows:
        held, _ = render_pairs(held_rows, tok, cfg)
        eval_batches = train_batches(held, tok, cfg, packed, training=False, views=views).all()
        report["eval pairs"] = len(held)
    batches = train_batches(pairs, tok, cfg, packed, views=views)
    started = time.time()
    run = train(
        model,
        tok,
        batches,
        make_loss_fn(cfg.rm.center),
        cfg,
        stage="rm",
        eval_batches=eval_batches,
        report=report,
        unit="pairs",
    )
    if eval_batches and (run / "final").exists() and trained_now(run, started):
        calib = calibration(model, eval_batches, cfg.seed)  # every rank: forwards are collective under FSDP
        verdict = quality_gate(model, tok, cfg, rows, held_rows)
        if not main_process():
            return run
        (run / "calibration.json").write_text(json.dumps(calib, indent=1))
        plot_calibration(calib, run / "plots" / "calibration.png")
        rows_m = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        last = [r for r in rows_m if "eval_accuracy" in r]
        with (run / "report.md").open("a") as f:
            f.write("\n## Reward model on held-out pairs\n\n")
            if last:
                f.write(
                    f"- pairwise accuracy: {last[-1]['eval_accuracy']:.3f}, mean margin r_w - r_l: {last[-1]['eval_margin']:.3f}\n"
                )
            f.write(
                f"- calibration: expected calibration error {calib['ece']:.3f} over {calib['pairs']} pairs "
                "(plots/calibration.png, calibration.json)\n"
            )
            f.write("\n" + rm_gate.markdown(verdict))
        rm_gate.save_verdict(verdict, run)
        if not verdict["passed"]:
            print(
                f"warning: the reward model did not pass its quality gate: {verdict['reason']}",
                file=sys.stderr,
            )
    return run


def quality_gate(model, tok, cfg: RMConfig, rows: list[dict], held_rows: list[dict]) -> dict:
    """The gate's verdict on the held-out pairs, scored as every later use will score them."""
    from tunelab.models.scorer import RewardScorer

    scorer = RewardScorer("", model=model, tok=tok, opts=render_options(cfg), batch_size=cfg.train.batch_size)
    verdict = rm_gate.run_gate(scorer, held_rows, rows, seed=cfg.seed, resamples=cfg.rm_gate.resamples)
    model.train()
    return verdict
