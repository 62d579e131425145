"""GRPO step time on the embedded SmolLM2-135M + LoRA (r16, q/k/v/o), fp32, CPU.

    python bench/grpo_step.py [--steps 6]

The setting TRL's GRPOTrainer was measured in here: 16 completions per step (8 per prompt), up to
32 new tokens. Prints the median step time with its generate / score / train split and the peak
memory (RSS), and writes bench/results/grpo_step.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", default="bench/results/grpo_step.json")
    args = ap.parse_args()

    from tunelab.config import load_config
    from tunelab.schema import RLConfig
    from tunelab.stages import rl

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            RLConfig,
            "configs/rl.yaml",
            [
                f"train.max_steps={args.steps}",
                f"out={tmp}/run",
                "resume=never",
                "rl.group=8",
                "rl.prompts_per_step=2",
                "rollout.max_new_tokens=32",
                "lora.r=16",
                "lora.targets=[q_proj, k_proj, v_proj, o_proj]",
                "train.save_every=null",
            ],
        )
        run = rl.main(cfg)
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][
            1:
        ]  # the first step warms up
        peak_mb = json.loads((run / "summary.json").read_text())["peak_memory_mb"]
    med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    result = {
        "workload": "GRPO smollm2-135m LoRA r16 q/k/v/o, 2 prompts x 8 completions, <= 32 new tokens, fp32 CPU",
        "median_step_s": med("step_s"),
        "median_generate_s": med("time_generate_s"),
        "median_score_s": med("time_score_s"),
        "median_train_s": med("step_s") - med("time_generate_s") - med("time_score_s"),
        "peak_memory": f"{peak_mb:.0f} MB",
        "steps_measured": len(rows),
        "trl_reference": "TRL 1.16 GRPOTrainer, same setting, same kind of machine: median ~25 s/step, 4.4 GB",
    }
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
