"""SFT-LoRA training throughput on the embedded SmolLM2-135M, fp32, CPU: target tokens per second.

    python bench/sft_lora_throughput.py [--steps 8] [--batch 8] [--pack/--no-pack]

Rows of 60-300 tokens (prompt 20-100, completion 40-200, chat template), completion-only loss,
LoRA r16 on q/k/v/o, batch 8. Prints and writes bench/results/sft_lora_throughput.json with the
machine's fp32 matmul peak measured in the same run, and the share of it reached (MFU).

MFU formula (LoRA: frozen weights get no weight gradient, so backward costs one forward, not two):
    FLOPs/step = 4 * N_body * tokens_in + 4 * (V * d) * tokens_target + attention
    N_body = parameters outside the embedding/head; the head runs only at target positions
    attention = 4 * layers * d * sum over sequences of T^2 (scores and values, forward + input grads)
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch


def matmul_peak(seconds: float = 3.0) -> float:
    """fp32 GFLOP/s of a 1024 x 576 x 1536 matmul (the MLP shape of SmolLM2)."""
    a, b = torch.randn(1024, 576), torch.randn(576, 1536)
    for _ in range(3):
        a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * 1024 * 576 * 1536 * n / (time.perf_counter() - start) / 1e9


WORDS = (
    "the model learns a short answer from each example and the loss falls only on the completion "
    "tokens while the prompt is context for it and nothing more than that"
).split()


def make_rows(n: int, tok, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def text(n_tokens):
        words = [rng.choice(WORDS) for _ in range(n_tokens)]
        return " ".join(words)

    rows = []
    for _ in range(n):
        rows.append({"prompt": text(rng.randint(20, 100)), "completion": text(rng.randint(40, 200))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--pack", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument(
        "--group", action=argparse.BooleanOptionalAction, default=False, help="group rows by length"
    )
    ap.add_argument("--out", default="bench/results/sft_lora_throughput.json")
    args = ap.parse_args()

    from tunelab.config import load_config
    from tunelab.data.sources import row_batches
    from tunelab.schema import SFTConfig
    from tunelab.stages.common import prepare_model, render_rows
    from tunelab.stages.sft import loss_fn
    from tunelab.train.optim import build_optimizer

    peak_before = matmul_peak()
    cfg = load_config(
        SFTConfig,
        None,
        [
            "model=smollm2-135m",
            "adapter=lora",
            "lora.r=16",
            "lora.dropout=0",
            f"train.batch_size={args.batch}",
            "train.max_len=1024",
        ],
    )
    model, tok = prepare_model(cfg)
    n_rows = (
        args.batch * (args.steps + 1) * (6 if args.pack else 1) * (8 if args.group else 1)
    )  # packing puts ~6 rows in a sequence
    items, stats = render_rows(make_rows(n_rows, tok), tok, cfg)
    pack_len = 1024 if args.pack else None  # several rows per sequence
    batches = list(
        row_batches(items, args.batch, tok.pad_token_id, pack_len=pack_len, group_by_length=args.group).epoch(
            0
        )
    )
    optimizer = build_optimizer(model, cfg.train)
    model.train()
    c = model.config
    n_body = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)
    head = c.vocab_size * c.hidden_size
    times, targets, inputs, flops = [], [], [], []
    for i, batch in enumerate(batches[: args.steps + 1]):
        start = time.perf_counter()
        loss_sum, _ = loss_fn(model, batch)
        (loss_sum / batch.n_targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - start
        if i == 0:
            continue  # warm-up
        real = batch.n_tokens
        lengths = (
            [batch.input_ids.shape[1]] * batch.input_ids.shape[0]
            if args.pack
            else batch.attention_mask.sum(1).tolist()
        )
        attn = 4 * c.num_hidden_layers * c.hidden_size * sum(t * t for t in lengths)
        times.append(dt)
        targets.append(batch.n_targets)
        inputs.append(real)
        flops.append(4 * n_body * real + 4 * head * batch.n_targets + attn)
        print(
            f"step {i}: {batch.n_targets / dt:.0f} target tok/s, {real / dt:.0f} tok/s in, {dt:.2f} s",
            flush=True,
        )
    peak = (peak_before + matmul_peak()) / 2
    result = {
        "workload": f"SFT LoRA r16 q/k/v/o, smollm2-135m fp32, batch {args.batch}, rows 60-300 tokens, "
        f"{'packed' if args.pack else 'grouped by length' if args.group else 'padded'}",
        "target_tokens_per_s": sum(targets) / sum(times),
        "input_tokens_per_s": sum(inputs) / sum(times),
        "median_step_s": statistics.median(times),
        "matmul_peak_gflops": peak,
        "achieved_gflops": sum(flops) / sum(times) / 1e9,
        "mfu": sum(flops) / sum(times) / 1e9 / peak,
        "target_share": sum(targets) / sum(inputs),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
