"""SFT: next-token loss on the completion / assistant tokens only; full fine-tuning or any PEFT adapter.

tunelab sft configs/sft.yaml data.train=my_pairs.jsonl adapter=lora

A row is one segment of the batch layout (data/layout.py): no prompt, one continuation whose labels
mark the trained tokens. `data.pack=true` lays each micro-batch out packed (rows of at most
train.max_len positions, a 4-D mask), else padded; which rows meet in a micro-batch, and in what order,
does not depend on it, and the two give the same losses within 1e-5 (tests/test_layout.py).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from tunelab.config.schema import SFTConfig
from tunelab.data.layout import Layout
from tunelab.data.read import read_dataset, records
from tunelab.data.sources import row_batches
from tunelab.errors import TunelabError
from tunelab.losses.lm import lm_loss_sum
from tunelab.models.capability import takes_4d_mask
from tunelab.models.forward import next_token_logits
from tunelab.stages.common import in_precision, prepare_model, render_rows, split_holdout
from tunelab.train.loop import train


def loss_fn(model, batch: Layout) -> tuple[Tensor, dict]:
    logits, targets = next_token_logits(model, batch)  # (K, V), (K,): only where a target is
    return lm_loss_sum(logits, targets), {}


def data_kind(path: str) -> str:
    """chat when rows hold messages/conversations, else pairs."""
    for _, record in records(path):
        if isinstance(record, dict):
            return "chat" if ("messages" in record or "conversations" in record) else "pairs"
    return "pairs"


@in_precision
def main(cfg: SFTConfig) -> Path:
    if not cfg.data.train:
        raise TunelabError(
            "sft needs training data: set data.train=PATH (pairs or chats, see `tunelab data check`)."
        )
    rows = read_dataset(cfg.data.train, data_kind(cfg.data.train))  # all rows checked before the model loads
    held_rows = read_dataset(cfg.data.eval, data_kind(cfg.data.eval)) if cfg.data.eval else []
    if not held_rows:
        rows, held_rows = split_holdout(rows, cfg.data.eval_split, cfg.seed)
    model, tok = prepare_model(cfg)
    items, stats = render_rows(rows, tok, cfg)
    if not items:
        raise TunelabError(
            f"No training rows are left after fitting them to train.max_len={cfg.train.max_len}; raise it."
        )
    pack_len = cfg.train.max_len if cfg.data.pack else None  # None: padded
    if pack_len and not takes_4d_mask(model):
        raise TunelabError("data.pack=true needs sdpa or eager attention (a 4-D mask): set data.pack=false.")
    batches = row_batches(
        items,
        cfg.train.batch_size,
        tok.pad_token_id,
        cfg.seed,
        pack_len,
        group_by_length=cfg.data.group_by_length,
    )
    report = stats.as_report("train")
    eval_batches = None
    if held_rows:
        held, held_stats = render_rows(held_rows, tok, cfg)
        eval_batches = row_batches(
            held, cfg.train.batch_size, tok.pad_token_id, 0, pack_len, shuffle=False
        ).all()
        report.update(held_stats.as_report("eval"))
    if pack_len:
        report["packing"] = f"each micro-batch's rows packed into rows of up to {pack_len} tokens"
    evaluators = [reward_evaluator(cfg, tok, held_rows)] if cfg.reward_eval.rm else None
    if cfg.task_eval.task:  # the task's own metric on validation rows (the ladder's training rungs)
        from tunelab.stages.task_eval import task_evaluator

        evaluators = [*(evaluators or []), task_evaluator(cfg, tok)]
    return train(
        model,
        tok,
        batches,
        loss_fn,
        cfg,
        stage="sft",
        eval_batches=eval_batches,
        evaluators=evaluators,
        report=report,
    )


def reward_evaluator(cfg: SFTConfig, tok, held_rows: list[dict]):
    """Stop SFT at the right time: the mean reward of answers to held-out prompts, watched by early stopping."""
    from tunelab.models.generation import generate
    from tunelab.models.rm_gate import check_before_use
    from tunelab.models.scorer import RewardScorer
    from tunelab.stages.common import render_options

    re = cfg.reward_eval
    if re.prompts:
        prompts = [r["prompt"] for r in read_dataset(re.prompts, "prompts")]
    else:
        prompts = [r["prompt"] for r in held_rows if "prompt" in r]
    prompts = [p for p in prompts if isinstance(p, str)][: re.n_prompts]
    if not prompts:
        raise TunelabError(
            "reward_eval needs held-out prompts: set reward_eval.prompts=FILE or data.eval_split."
        )
    if not cfg.train.eval_every:
        raise TunelabError("reward_eval runs at each evaluation: set train.eval_every=N.")
    scorer = RewardScorer(re.rm)
    check_before_use(re.rm, strict=cfg.rm_gate.strict, use="reward_eval", scorer=scorer)
    es = cfg.train.early_stop
    es.metric, es.mode, es.patience = "eval_reward", "max", re.patience
    opts = render_options(cfg)

    def evaluate_reward(model) -> dict[str, float]:
        model.eval()
        answers = generate(
            model, tok, prompts, max_new_tokens=re.max_new_tokens, temperature=re.temperature, opts=opts
        )
        scores = scorer.score(list(zip(prompts, answers, strict=True)))
        return {"eval_reward": sum(scores) / len(scores)}

    return evaluate_reward
