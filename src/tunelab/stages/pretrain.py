"""Pre-training: next-token loss on every token of raw text, cut into fixed-length blocks and streamed.

tunelab pretrain configs/pretrain.yaml data.train=corpus/ train.max_steps=1000
tunelab pretrain configs/pretrain.yaml data.train=tok/     # a `tunelab data tokenize` folder

Raw text (JSONL `text`, .txt, a folder of them) is tokenised on the fly; a token folder is read as
blocks straight from its memory-mapped tokens.bin (data/token_blocks.py), which is what scales.
A block is one segment of the batch layout (data/layout.py), every token but its first a target. Blocks
are full, so the padded layout has no padding; `data.pack=true` lays them out packed all the same (a
block to a row, a 4-D mask: the same losses within 1e-5, for checking that path, not for speed).
"""

from __future__ import annotations

from pathlib import Path

from tunelab.config.schema import PretrainConfig
from tunelab.data.prep.tokenize import is_token_dir
from tunelab.data.sources import TextBlocks, text_paths
from tunelab.errors import TunelabError
from tunelab.models.capability import takes_4d_mask
from tunelab.stages.common import in_precision, prepare_model
from tunelab.stages.sft import loss_fn  # the same next-token loss; here every position carries a label
from tunelab.train.loop import train

__all__ = ["loss_fn", "main"]


@in_precision
def main(cfg: PretrainConfig) -> Path:
    if not cfg.data.train:
        raise TunelabError(
            "pretrain needs text: set data.train=PATH (JSONL with `text`, .txt, or a folder of them)."
        )
    model, tok = prepare_model(cfg)
    if cfg.data.pack and not takes_4d_mask(model):
        raise TunelabError("data.pack=true needs sdpa or eager attention (a 4-D mask): set data.pack=false.")
    block = cfg.train.max_len
    holdout_every = round(1 / cfg.data.eval_split) if cfg.data.eval_split and not cfg.data.eval else 0
    if is_token_dir(cfg.data.train):
        blocks, eval_batches, report = token_data(cfg, tok, holdout_every)
        return train(
            model, tok, blocks, loss_fn, cfg, stage="pretrain", eval_batches=eval_batches, report=report
        )
    packed = cfg.data.pack
    blocks = TextBlocks(
        text_paths(cfg.data.train),
        tok,
        block,
        cfg.train.batch_size,
        cfg.seed,
        holdout_every=holdout_every,
        packed=packed,
    )
    report = {"block length": f"{block} tokens (consecutive blocks overlap by one token)"}
    if (
        not cfg.train.max_steps
    ):  # one pass to count blocks (and check every row) so epochs can be turned into steps
        n = blocks.count()
        if n == 0 and not blocks.n_documents:
            raise TunelabError(f"{cfg.data.train} has no rows of text (nothing but blank lines).")
        if n == 0:
            raise TunelabError(
                f"{cfg.data.train} holds fewer than train.max_len={block} tokens: lower train.max_len."
            )
        report["train blocks per epoch"] = n
    eval_batches = None
    if cfg.data.eval or holdout_every:
        paths = text_paths(cfg.data.eval) if cfg.data.eval else blocks.paths
        held = TextBlocks(
            paths,
            tok,
            block,
            cfg.train.batch_size,
            holdout_every=holdout_every,
            split="eval" if holdout_every else "train",
            max_blocks=64,
            packed=packed,
        )
        eval_batches = list(held.epoch(0))
        report["eval blocks"] = sum(b.input_ids.shape[0] for b in eval_batches)
    if cfg.train.max_steps and blocks.micro_batches_per_epoch:
        report["epochs"] = (
            f"{cfg.train.max_steps * cfg.train.grad_accum / blocks.micro_batches_per_epoch:.2f}"
        )
    return train(model, tok, blocks, loss_fn, cfg, stage="pretrain", eval_batches=eval_batches, report=report)


def token_data(cfg: PretrainConfig, tok, holdout_every: int):
    """(train blocks, eval batches, report lines) from a token folder; its tokenizer must be the model's."""
    from tunelab.data.prep.tokenize import read_meta, tokenizer_fingerprint
    from tunelab.data.token_blocks import TokenBlocks

    meta = read_meta(cfg.data.train)
    if meta["tokenizer_fingerprint"] != tokenizer_fingerprint(tok):
        raise TunelabError(
            f"{cfg.data.train} was tokenised with {meta['tokenizer']}, whose tokenizer is not "
            f"{cfg.model.name}'s: run `tunelab data tokenize ... --model {cfg.model.name}` again."
        )
    block, batch, packed = cfg.train.max_len, cfg.train.batch_size, cfg.data.pack
    blocks = TokenBlocks(cfg.data.train, block, batch, cfg.seed, holdout_every=holdout_every, packed=packed)
    if len(blocks) == 0:
        raise TunelabError(
            f"{cfg.data.train} holds {meta['n_tokens']} tokens, fewer than a block of train.max_len={block}."
        )
    report = {
        "block length": f"{block} tokens (consecutive blocks overlap by one token)",
        "train tokens": f"{meta['n_tokens']:,} in {meta['n_docs']:,} documents (memory-mapped {cfg.data.train})",
        "train blocks per epoch": len(blocks),
    }
    if cfg.data.eval and is_token_dir(cfg.data.eval):
        held = TokenBlocks(cfg.data.eval, block, batch, max_blocks=64, packed=packed)
    elif cfg.data.eval:
        held = TextBlocks(text_paths(cfg.data.eval), tok, block, batch, max_blocks=64, packed=packed)
    elif holdout_every:
        held = TokenBlocks(
            cfg.data.train,
            block,
            batch,
            holdout_every=holdout_every,
            split="eval",
            max_blocks=64,
            packed=packed,
        )
    else:
        return blocks, None, report
    eval_batches = list(held.epoch(0))
    report["eval blocks"] = sum(b.input_ids.shape[0] for b in eval_batches)
    return blocks, eval_batches, report
