"""Where tunelab's time goes: torch.profiler's top operators for one SFT-LoRA step and one GRPO step.

    python -m bench.profile            # writes bench/results/profile.md

The evidence behind the goals the benchmark misses: which operators a step spends its time in
(self CPU time, the step's share), after one warm-up step, on the workloads of `python -m bench`.
"""

from __future__ import annotations

import time

from bench.data import rl_prompts, sft_rows
from bench.harness import RESULTS, matmul_peak
from bench.sft import LORA


def top(prof, seconds: float, rows: int = 12) -> list[str]:
    """Markdown rows: operator, its share of the step and milliseconds, calls, the largest input shapes."""
    by_name = {}
    for e in prof.key_averages(group_by_input_shape=True):
        entry = by_name.setdefault(e.key, {"us": 0.0, "calls": 0, "shapes": []})
        entry["us"] += e.self_cpu_time_total
        entry["calls"] += e.count
        entry["shapes"].append((e.self_cpu_time_total, str(e.input_shapes)[:70]))
    total = sum(v["us"] for v in by_name.values())
    lines = [
        "| operator | share of self CPU time | ms | calls | costliest shapes |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, v in sorted(by_name.items(), key=lambda kv: -kv[1]["us"])[:rows]:
        shapes = "; ".join(s for _, s in sorted(v["shapes"], reverse=True)[:2])
        lines.append(
            f"| {name} | {100 * v['us'] / total:.1f}% | {v['us'] / 1e3:.0f} | {v['calls']} | `{shapes}` |"
        )
    return [f"step {seconds:.1f} s, profiled self CPU time {total / 1e6:.1f} s", "", *lines]


def sft_lora() -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    from tunelab.config import load_config
    from tunelab.config.schema import SFTConfig
    from tunelab.data.sources import row_batches
    from tunelab.stages.common import prepare_model, render_rows
    from tunelab.stages.sft import loss_fn
    from tunelab.train.optim import build_optimizer

    cfg = load_config(SFTConfig, None, ["model=smollm2-135m", "adapter=lora", *LORA, "train.batch_size=8"])
    model, tok = prepare_model(cfg)
    items, _ = render_rows(sft_rows(24), tok, cfg)
    batches = list(row_batches(items, 8, tok.pad_token_id, group_by_length=True).epoch(0))
    optimizer = build_optimizer(model, cfg.train)
    model.train()

    def step(batch):
        loss, _ = loss_fn(model, batch)
        (loss / batch.n_targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        step(batches[1])
        seconds = time.perf_counter() - start
    b = batches[1]
    head = f"SFT-LoRA step, batch {tuple(b.input_ids.shape)}, {b.n_tokens} real tokens, {b.n_targets} targets"
    return [f"### {head}", "", *top(prof, seconds)]


def grpo() -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    from tunelab.config import load_config
    from tunelab.config.schema import RLConfig
    from tunelab.rl.rewards import build_reward
    from tunelab.rl.rollout import RolloutSource
    from tunelab.stages import rl
    from tunelab.stages.common import prepare_model, render_options

    cfg = load_config(
        RLConfig,
        "configs/rl.yaml",
        ["rl.group=8", "rl.prompts_per_step=2", "rollout.max_new_tokens=32", *LORA],
    )
    model, tok = prepare_model(cfg)
    source = RolloutSource(
        model,
        tok,
        rl_prompts(),
        build_reward(cfg.reward),
        cfg,
        ref=rl.reference(model, cfg),
        opts=render_options(cfg),
    )
    loss_fn = rl.make_loss_fn(cfg)
    batches = source.epoch(0)

    def step():
        batch = next(batches)  # sample, score, reference forward
        loss, _ = loss_fn(model, batch)
        (loss / batch.n_targets).backward()
        model.zero_grad(set_to_none=True)
        return batch

    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        batch = step()
        seconds = time.perf_counter() - start
    s = batch.stats
    head = (
        f"GRPO step, 2 x 8 completions (mean {s['completion_len']:.1f} tokens): sampling {s['time_generate_s']:.1f} s, "
        f"reference forward + update {seconds - s['time_generate_s'] - s['time_score_s']:.1f} s"
    )
    return [f"### {head}", "", *top(prof, seconds)]


def main() -> None:
    peak = matmul_peak()
    parts = [
        f"# Profiles ({time.strftime('%Y-%m-%d')}, `python -m bench.profile`)",
        "",
        f"fp32 matmul peak at the start: {peak:.0f} GFLOP/s. Self CPU time per operator under torch.profiler "
        "(which adds some overhead); shapes are the inputs of the costliest calls.",
        "",
        *sft_lora(),
        "",
        *grpo(),
        "",
    ]
    (RESULTS / "profile.md").write_text("\n".join(parts))
    print("\n".join(parts))


if __name__ == "__main__":
    main()
