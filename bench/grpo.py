"""GRPO step time, one side per process: `tunelab rl` (configs/rl.yaml) vs TRL's GRPOTrainer.

    python -m bench.grpo --side tunelab --steps 3 --precision auto
    python -m bench.grpo --side trl --steps 3 --precision bf16

SmolLM2-135M + LoRA r16 q/k/v/o, 2 prompts x 8 completions per step, up to 32 new tokens,
temperature 1, KL to the adapter-off reference with beta 0.04 on both sides, the sums task with the
`number` reward. The figure is the median seconds per step (sampling, scoring and the update), the
first `--warmup` steps left out; tunelab also reports its generate / score / train split.
`--precision` as in bench/sft.py: tunelab `train.precision=P`, TRL `bf16=True|False`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench.data import rl_prompts, write_jsonl
from bench.harness import StepTimer, emit, peer_attention, peer_model, resolved_precision, trl_setting
from bench.sft import LORA, TARGETS, add_precision, precision_overrides, trl_bf16

INSTRUCTION = "Answer with the number only."  # configs/rl.yaml's data.instruction


def parse(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=["tunelab", "trl"], required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--tl", nargs="*", default=[])
    ap.add_argument("--trl", nargs="*", default=[])
    add_precision(ap)
    return ap.parse_args(argv)


def tunelab_side(a) -> dict:
    from tunelab.config import load_config
    from tunelab.config.schema import RLConfig
    from tunelab.stages import rl

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_jsonl(rl_prompts(), tmp / "prompts.jsonl")
        cfg = load_config(
            RLConfig,
            "configs/rl.yaml",
            [
                f"data.train={data}",
                f"train.max_steps={a.warmup + a.steps}",
                f"out={tmp / 'run'}",
                "resume=never",
                "rl.group=8",
                "rl.prompts_per_step=2",
                "rollout.max_new_tokens=32",
                "kl.beta=0.04",
                *LORA,
                "train.save_every=null",
                *precision_overrides(a),
                *a.tl,
            ],
        )
        run = rl.main(cfg)
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][a.warmup :]
        resolved = resolved_precision(run)
    med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    return {
        "figure": med("step_s"),
        "step_s": [r["step_s"] for r in rows],
        "generate_s": med("time_generate_s"),
        "score_s": med("time_score_s"),
        "train_s": statistics.median(r["step_s"] - r["time_generate_s"] - r["time_score_s"] for r in rows),
        "completion_len": statistics.mean(r["completion_len"] for r in rows),
        "settings": " ".join(a.tl) or "defaults",
        "precision": a.precision or "default",
        "precision_resolved": resolved,
    }


def trl_side(a) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from tunelab.rl.rewards import build_reward

    model, tok = peer_model()
    reward = build_reward("number")
    lengths = []

    def number_reward(prompts, completions, answer, **kwargs) -> list[float]:
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        lengths.extend(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
        return reward.total(reward.parts([{"answer": x} for x in answer], texts))

    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": f"{INSTRUCTION}\n\n{r['prompt']}"}],
                "answer": r["answer"],
            }
            for r in rl_prompts()
        ]
    )
    settings = {"gradient_checkpointing": False, **trl_setting(a.trl)}
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=16,  # 2 prompts x 8 completions
            num_generations=8,
            max_completion_length=32,
            temperature=1.0,
            top_p=1.0,
            beta=0.04,
            learning_rate=1e-4,
            lr_scheduler_type="constant",
            max_steps=a.warmup + a.steps,
            bf16=trl_bf16(a),
            logging_steps=1000,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=0,
            **settings,
        )
        peft = LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=number_reward,
            args=args,
            train_dataset=dataset,
            processing_class=tok,
            peft_config=peft,
        )
        timer = StepTimer()
        trainer.add_callback(timer.callback())
        trainer.train()
    seconds = timer.seconds[a.warmup :]
    return {
        "figure": statistics.median(seconds),
        "step_s": seconds,
        "completion_len": statistics.mean(lengths[16 * a.warmup :]) if lengths else None,
        "settings": " ".join(f"{k}={v}" for k, v in settings.items()),
        "precision": "bf16" if args.bf16 else "fp32",
        "attention": peer_attention(),
    }


def main(argv=None) -> None:
    a = parse(argv)
    emit(tunelab_side(a) if a.side == "tunelab" else trl_side(a))


if __name__ == "__main__":
    main()
