"""SFT throughput, one side per process: tunelab's `tunelab sft` stage vs TRL's SFTTrainer.

    python -m bench.sft --side tunelab --adapter lora --steps 4 --precision auto
    python -m bench.sft --side trl --adapter lora --steps 4 --precision bf16 --trl padding_free=true

Both sides train on the same rows, tokenised once by tunelab's renderer (chat template, loss on the
completion only); TRL gets them as `input_ids` + `labels`, so the tokens are identical. The figure is
target (completion) tokens per second over the measured steps; the first `--warmup` steps are left out.
tunelab runs its real stage (`sft.main`: the loop with clipping, guard, logging) and the step times
come from its metrics.jsonl; TRL's come from a callback around each optimizer step.
`--precision`: tunelab gets `train.precision=P` (auto|fp32|bf16; what it resolved to, from the run's
config.yaml, is in the result); TRL gets `bf16=True` for bf16 and `bf16=False` for fp32. Without it
tunelab runs its own default and TRL fp32.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.data import fixed_rows, sft_rows, write_jsonl
from bench.harness import (
    Shape,
    StepTimer,
    count_inputs,
    emit,
    median_rate,
    peer_attention,
    peer_model,
    resolved_precision,
    trl_setting,
)

LORA = ["lora.r=16", "lora.alpha=32", "lora.dropout=0", "lora.targets=[q_proj, k_proj, v_proj, o_proj]"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def parse(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=["tunelab", "trl"], required=True)
    ap.add_argument("--adapter", choices=["lora", "none"], default="lora")
    ap.add_argument("--steps", type=int, default=4, help="measured steps")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=0, help="rows of this many tokens (scaling); 0: mixed 60-300")
    ap.add_argument("--tl", nargs="*", default=[], help="extra tunelab key=value overrides")
    ap.add_argument("--trl", nargs="*", default=[], help="SFTConfig key=value settings")
    add_precision(ap)
    return ap.parse_args(argv)


def add_precision(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default=None,
        help="tunelab: train.precision=P; TRL: bf16=True for bf16, bf16=False for fp32 (default: no override / fp32)",
    )


def precision_overrides(a) -> list[str]:
    """tunelab's override for `--precision` (none without it: the stage's own default)."""
    return [f"train.precision={a.precision}"] if a.precision else []


def trl_bf16(a) -> bool:
    """TRL's `bf16=` for `--precision`: True for bf16, False for fp32 (and without the flag)."""
    if a.precision not in (None, "fp32", "bf16"):
        raise SystemExit(f"the TRL side runs fp32 or bf16, not {a.precision}")
    return a.precision == "bf16"


def make_rows(a) -> list[dict]:
    n = a.batch * (a.warmup + a.steps) + a.batch  # a spare batch: no step runs short (packed or not)
    return fixed_rows(n, a.seq) if a.seq else sft_rows(n)


def config(a, tmp: Path, data: Path):
    from tunelab.config import load_config
    from tunelab.config.schema import SFTConfig

    overrides = [
        "model=smollm2-135m",
        f"adapter={a.adapter}",
        *(LORA if a.adapter == "lora" else []),
        f"data.train={data}",
        "data.eval_split=0",
        f"train.batch_size={a.batch}",
        f"train.max_steps={a.warmup + a.steps}",
        f"train.max_len={max(1024, a.seq + 64)}",
        f"train.lr={2e-4 if a.adapter == 'lora' else 1e-5}",
        "train.save_every=null",
        "train.eval_every=null",
        f"out={tmp / 'run'}",
        "resume=never",
        *precision_overrides(a),
        *a.tl,
    ]
    return load_config(SFTConfig, None, overrides)


def step_shapes(units: list, indices: list[list[int]]) -> list[tuple[list[int], int]]:
    """(document lengths, target tokens) of each micro-batch, from the rendered rows (packed or padded,
    a micro-batch holds the same rows)."""
    from tunelab.data.render import IGNORE

    out = []
    for batch in indices:
        rows = [units[i] for i in batch]
        targets = sum(1 for unit in rows for t in unit.labels[1:] if t != IGNORE)
        out.append(([len(unit.input_ids) for unit in rows], targets))
    return out


def tunelab_side(a) -> dict:
    import json

    import torch

    from tunelab.data.sources import row_batches
    from tunelab.models.load import load_model
    from tunelab.stages import sft
    from tunelab.stages.common import render_rows

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = config(a, tmp, write_jsonl(make_rows(a), tmp / "train.jsonl"))
        run = sft.main(cfg)
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        resolved = resolved_precision(run)
        # the same micro-batches the stage made (same call, same seed), for their lengths
        model, tok = load_model("smollm2-135m")
        items, _ = render_rows(sft.read_dataset(cfg.data.train, "pairs"), tok, cfg)
        source = row_batches(
            items,
            a.batch,
            tok.pad_token_id,
            cfg.seed,
            cfg.train.max_len if cfg.data.pack else None,
            group_by_length=cfg.data.group_by_length,
        )
        shapes = step_shapes(source.units, source._batches(0))
    measured = rows[a.warmup :]
    seconds = [r["step_s"] for r in measured]
    targets = [s[1] for s in shapes[a.warmup : a.warmup + a.steps]]
    # the stage counted the same targets: proof these are the batches it trained on
    logged = [r["tokens"] - (rows[i - 1]["tokens"] if i else 0) for i, r in enumerate(rows)][a.warmup :]
    assert logged == targets, (logged, targets)
    mode = "frozen" if a.adapter == "lora" else "full"
    flops = [Shape.of(model).flops(lengths, t, mode) for lengths, t in shapes[a.warmup : a.warmup + a.steps]]
    return {
        "figure": median_rate(targets, seconds),
        "step_s": seconds,
        "targets": targets,
        "tokens": [sum(s[0]) for s in shapes[a.warmup : a.warmup + a.steps]],
        "flops_per_s": sum(flops) / sum(seconds),
        "settings": " ".join(a.tl) or "defaults",
        "precision": a.precision or "default",
        "precision_resolved": resolved,
        "threads": torch.get_num_threads(),
    }


def trl_side(a) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tunelab.config import load_config
    from tunelab.config.schema import SFTConfig as TLConfig
    from tunelab.stages.common import render_rows

    model, tok = peer_model()
    cfg = load_config(TLConfig, None, [f"train.max_len={max(1024, a.seq + 64)}"])
    items, _ = render_rows(make_rows(a), tok, cfg)
    dataset = Dataset.from_list([{"input_ids": it.input_ids, "labels": it.labels} for it in items])
    shape = Shape.of(model)
    settings = {"gradient_checkpointing": False, **trl_setting(a.trl)}
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(
            output_dir=tmp,
            per_device_train_batch_size=a.batch,
            max_steps=a.warmup + a.steps,
            learning_rate=2e-4 if a.adapter == "lora" else 1e-5,
            bf16=trl_bf16(a),  # True: TRL's bf16 autocast (its default where the hardware has bf16)
            # rows come already fitted; padding-free without packing refuses a max_length it cannot enforce
            max_length=None if settings.get("padding_free") else max(1024, a.seq + 64),
            logging_steps=1000,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=0,
            **settings,
        )
        peft_config = (
            LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
            if a.adapter == "lora"
            else None
        )
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tok, peft_config=peft_config
        )
        timer, seen = StepTimer(), []
        trainer.add_callback(timer.callback())
        count_inputs(trainer, seen)
        trainer.train()
    seconds = timer.seconds[a.warmup :]
    shapes = seen[a.warmup :]
    targets = [t for _, t in shapes]
    mode = "frozen" if a.adapter == "lora" else "full"
    flops = [shape.flops(lengths, t, mode) for lengths, t in shapes]
    return {
        "figure": median_rate(targets, seconds),
        "step_s": seconds,
        "targets": targets,
        "tokens": [sum(s[0]) for s in shapes],
        "flops_per_s": sum(flops) / sum(seconds),
        "settings": " ".join(f"{k}={v}" for k, v in settings.items()),
        "precision": "bf16" if args.bf16 else "fp32",
        "attention": peer_attention(),
        "threads": torch.get_num_threads(),
    }


def main(argv=None) -> None:
    a = parse(argv)
    emit(tunelab_side(a) if a.side == "tunelab" else trl_side(a))


if __name__ == "__main__":
    main()
