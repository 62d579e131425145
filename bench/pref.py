"""Preference training, one side per process: reward model (`tunelab rm` vs TRL RewardTrainer) and DPO
(`tunelab dpo` vs TRL DPOTrainer), both LoRA r16 q/k/v/o on SmolLM2-135M, 8 pairs a step.

    python -m bench.pref --task rm --side tunelab --steps 3 --precision auto
    python -m bench.pref --task dpo --side trl --steps 3 --precision bf16

The figure is preference pairs per second over the measured steps. The reward model trains its
scalar head with the adapter; DPO's reference is the model with the adapter switched off on both sides
(TRL's `precompute_ref_log_probs` stays off: it would move the reference forwards out of the timed
steps, not remove them). RM pairs reach the trainer as token ids rendered by tunelab; DPO pairs as
chat messages (TRL's DPOTrainer tokenises text itself, with the same chat template).
`--precision` as in bench/sft.py: tunelab `train.precision=P`, TRL `bf16=True|False`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.data import preference_rows, write_jsonl
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
from bench.sft import LORA, TARGETS, add_precision, precision_overrides, trl_bf16


def parse(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=["rm", "dpo"], required=True)
    ap.add_argument("--side", choices=["tunelab", "trl"], required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tl", nargs="*", default=[])
    ap.add_argument("--trl", nargs="*", default=[])
    add_precision(ap)
    return ap.parse_args(argv)


def rows_for(a) -> list[dict]:
    return preference_rows(a.batch * (a.warmup + a.steps + 1))


def tunelab_side(a) -> dict:
    from tunelab.config import load_config
    from tunelab.config.schema import DPOConfig, RMConfig
    from tunelab.models.load import load_model
    from tunelab.stages import dpo, rm

    stage = rm if a.task == "rm" else dpo
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_jsonl(rows_for(a), tmp / "pairs.jsonl")
        overrides = [
            "model=smollm2-135m",
            "adapter=lora",
            *LORA,
            f"data.train={data}",
            "data.eval_split=0",
            f"train.batch_size={a.batch}",
            f"train.max_steps={a.warmup + a.steps}",
            "train.max_len=512",
            "train.save_every=null",
            "train.eval_every=null",
            f"out={tmp / 'run'}",
            "resume=never",
            *precision_overrides(a),
            *a.tl,
        ]
        cfg = load_config(RMConfig if a.task == "rm" else DPOConfig, None, overrides)
        run = stage.main(cfg)
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        resolved = resolved_precision(run)
        # the same micro-batches the stage made, for their lengths
        model, tok = load_model("smollm2-135m")
        rows = stage.read_dataset(cfg.data.train, "preference")
        if a.task == "rm":
            pairs, _ = rm.render_pairs(rows, tok, cfg)
            source = rm.train_batches(pairs, tok, cfg)
            shapes = [
                ([len(pairs[i].chosen) for i in b] + [len(pairs[i].rejected) for i in b], 0)
                for b in source._batches(0)
            ]
        else:
            pairs = dpo.render_pairs(rows, tok, cfg)
            source = dpo.train_batches(pairs, tok, cfg)
            shapes = [
                (
                    [len(pairs[i][k].input_ids) for k in (0, 1) for i in b],
                    sum(pairs[i][k].n_trained for k in (0, 1) for i in b),
                )
                for b in source._batches(0)
            ]
    seconds = [r["step_s"] for r in metrics[a.warmup :]]
    shapes = shapes[a.warmup : a.warmup + a.steps]
    out = result(a, Shape.of(model), seconds, shapes, " ".join(a.tl) or "defaults")
    return {**out, "precision": a.precision or "default", "precision_resolved": resolved}


def result(a, shape: Shape, seconds: list[float], shapes: list, settings: str) -> dict:
    """Pairs/s and model FLOPs: RM = one frozen-base training pass; DPO = that plus the reference forward."""
    flops = []
    for lengths, scored in shapes:
        f = shape.flops(lengths, scored, "frozen")
        if a.task == "dpo":
            f += shape.flops(lengths, scored, "forward")
        flops.append(f)
    return {
        "figure": median_rate([a.batch] * len(seconds), seconds),
        "step_s": seconds,
        "tokens": [sum(s[0]) for s in shapes],
        "flops_per_s": sum(flops) / sum(seconds),
        "settings": settings,
    }


def trl_side(a) -> dict:
    from datasets import Dataset
    from peft import LoraConfig

    from tunelab.config import load_config
    from tunelab.config.schema import RMConfig
    from tunelab.stages import rm

    rows = rows_for(a)
    settings = {"gradient_checkpointing": False, **trl_setting(a.trl)}
    common = dict(
        per_device_train_batch_size=a.batch,
        max_steps=a.warmup + a.steps,
        bf16=trl_bf16(a),
        max_length=512,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        **settings,
    )
    if a.task == "rm":
        from trl import RewardConfig, RewardTrainer

        model, tok = peer_model(head="reward")
        pairs, _ = rm.render_pairs(rows, tok, load_config(RMConfig, None, ["train.max_len=512"]))
        dataset = Dataset.from_list([{"chosen_ids": p.chosen, "rejected_ids": p.rejected} for p in pairs])
        peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="SEQ_CLS")
        make = lambda out: RewardTrainer(  # noqa: E731
            model=model,
            args=RewardConfig(output_dir=out, learning_rate=1e-4, **common),
            train_dataset=dataset,
            processing_class=tok,
            peft_config=peft,
        )
    else:
        from trl import DPOConfig, DPOTrainer

        model, tok = peer_model()
        dataset = Dataset.from_list(
            [
                {
                    "prompt": [{"role": "user", "content": r["prompt"]}],
                    "chosen": [{"role": "assistant", "content": r["chosen"]}],
                    "rejected": [{"role": "assistant", "content": r["rejected"]}],
                }
                for r in rows
            ]
        )
        peft = LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"
        )
        make = lambda out: DPOTrainer(  # noqa: E731
            model=model,
            args=DPOConfig(output_dir=out, learning_rate=5e-5, beta=0.1, **common),
            train_dataset=dataset,
            processing_class=tok,
            peft_config=peft,
        )
    shape = Shape.of(model)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make(tmp)
        timer, seen = StepTimer(), []
        trainer.add_callback(timer.callback())
        count_inputs(trainer, seen)
        trainer.train()
    text = " ".join(f"{k}={v}" for k, v in settings.items())
    out = result(a, shape, timer.seconds[a.warmup :], seen[a.warmup :], text)
    return {**out, "precision": "bf16" if common["bf16"] else "fp32", "attention": peer_attention()}


def main(argv=None) -> None:
    a = parse(argv)
    emit(tunelab_side(a) if a.side == "tunelab" else trl_side(a))


if __name__ == "__main__":
    main()
