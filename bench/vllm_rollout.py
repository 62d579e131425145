"""GRPO with vLLM rollouts against HF generate, on a GPU machine (`pip install 'tunelab[vllm]'`).

    python bench/vllm_rollout.py [--steps 6] [--adapter lora|none]

The same GRPO run on the embedded SmolLM2-135M (2 prompts x 8 completions, <= 32 new tokens) twice:
rollout.backend=hf, then rollout.backend=vllm. Prints the median step time with its generate / train
split for each, the ratio, and vLLM's log-prob mismatch to the trainer; writes
bench/results/vllm_rollout.json. It cannot run on a CPU machine (vLLM needs a GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


def run(backend: str, steps: int, adapter: str, tmp: str) -> dict:
    from tunelab.config import load_config
    from tunelab.config.schema import RLConfig
    from tunelab.stages import rl

    cfg = load_config(
        RLConfig,
        "configs/rl.yaml",
        [
            f"rollout.backend={backend}",
            f"adapter={adapter}",
            f"train.max_steps={steps}",
            f"out={tmp}/{backend}",
            "resume=never",
            "rl.group=8",
            "rl.prompts_per_step=2",
            "rollout.max_new_tokens=32",
            "train.save_every=null",
        ],
    )
    out = rl.main(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][1:]  # step 1 warms up
    med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    result = {"median_step_s": med("step_s"), "median_generate_s": med("time_generate_s")}
    result["median_train_s"] = result["median_step_s"] - result["median_generate_s"] - med("time_score_s")
    if backend == "vllm":
        result["mean_vllm_logp_mismatch"] = statistics.mean(r["vllm_logp_mismatch"] for r in rows)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--adapter", default="lora", choices=["lora", "none"])
    ap.add_argument("--out", default="bench/results/vllm_rollout.json")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench/vllm_rollout.py needs a GPU (vLLM does not run on this machine).")
    with tempfile.TemporaryDirectory() as tmp:
        hf = run("hf", args.steps, args.adapter, tmp)
        vllm = run("vllm", args.steps, args.adapter, tmp)
    result = {
        "workload": f"GRPO smollm2-135m adapter={args.adapter}, 2 prompts x 8 completions, <= 32 new tokens",
        "device": torch.cuda.get_device_name(0),
        "hf": hf,
        "vllm": vllm,
        "step_speedup": hf["median_step_s"] / vllm["median_step_s"],
        "generate_speedup": hf["median_generate_s"] / vllm["median_generate_s"],
    }
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
