"""tunelab vs TRL (and HF generate), side by side on this machine: `python -m bench [WORKLOAD ...] [--quick]`.

    python -m bench                      # every workload, 2 rounds each: tunelab, TRL, tunelab, TRL
    python -m bench sft_lora grpo        # some of them
    python -m bench --quick              # few steps, small sizes, one round: a smoke check (results in $TMPDIR)
    python -m bench --omp-wait passive   # on a machine that other jobs keep busy
    make bench                           # the same as `python -m bench`

Workloads: sft_lora, sft_full, rm, dpo, grpo, gen, scaling. Each side of each round runs in its own
process (its peak RSS from os.wait4); the sides alternate A B A B so a shared machine's drift falls on
both; the fp32 matmul peak is measured before and after every round. Figures are medians over rounds.
Writes bench/results/<workload>.json and bench/results/latest.md (the newest result of every workload)
and prints the table;
each side's output goes to $TMPDIR/tunelab-bench/.
Needs the `bench` extra: pip install -e '.[bench]' (TRL), with torch pinned as in the Makefile.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import (
    CHILD_ENV,
    MFU_FORMULA,
    OMP_WAIT,
    RESULTS,
    Workload,
    matmul_peak,
    run_side,
    summarise,
    table,
)

# Each side's fastest SFT setting found here (`python -m bench sft_settings`; bench/results/sft_settings.json):
# TRL without gradient checkpointing and padding-free (rows laid end to end; under SDPA transformers keeps
# them apart with a block-diagonal mask made from the restarting position ids); tunelab grouping rows by length.
TRL_SFT_BEST = ["gradient_checkpointing=false", "padding_free=true"]
TUNELAB_SFT = ["data.group_by_length=true"]


def workloads(quick: bool) -> dict[str, Workload]:
    steps = ["--steps", "1" if quick else "2", "--warmup", "1"]
    sft = [*steps, "--tl", *TUNELAB_SFT, "--trl", *TRL_SFT_BEST]
    return {
        w.name: w
        for w in [
            Workload(
                "sft_lora",
                "SFT LoRA r16 q/k/v/o, batch 8, rows 60-300 tokens, completion-only loss",
                "sft",
                ["tunelab", "trl"],
                [*sft, "--adapter", "lora"],
                unit="target tok/s",
                goal=2.0,
            ),
            Workload(
                "sft_full",
                "full SFT, same data",
                "sft",
                ["tunelab", "trl"],
                [*sft, "--adapter", "none"],
                unit="target tok/s",
                goal=1.5,
            ),
            Workload(
                "rm",
                "reward model LoRA, 8 pairs/step, answers 60-300 tokens",
                "pref",
                ["tunelab", "trl"],
                ["--task", "rm", *steps],
                unit="pairs/s",
                goal=1.5,
            ),
            Workload(
                "dpo",
                "DPO LoRA, 8 pairs/step, reference = adapter off",
                "pref",
                ["tunelab", "trl"],
                ["--task", "dpo", *steps],
                unit="pairs/s",
                goal=1.5,
            ),
            Workload(
                "grpo",
                "GRPO LoRA, 2 prompts x 8 completions, <= 32 new tokens",
                "grpo",
                ["tunelab", "trl"],
                steps,
                unit="s/step",
                higher_is_better=False,
                goal=3.0,
            ),
            Workload(
                "gen",
                f"eval generation, greedy, {16 if quick else 64} prompts x <= {32 if quick else 64} new tokens",
                "gen",
                ["tunelab", "hf_batched", "hf_single"],
                ["--prompts", "16", "--new", "32"] if quick else [],
                unit="new tok/s",
            ),
        ]
    }


def scaling(quick: bool, log_dir) -> dict:
    """tunelab SFT-LoRA as rows get longer (batch 2) and as the batch grows (256-token rows)."""
    lengths = [256, 512] if quick else [256, 512, 1024, 2048]
    batches = [1, 2] if quick else [1, 2, 4, 8]
    steps = ["--steps", "1" if quick else "2", "--warmup", "1"]
    points = [(2, n) for n in lengths] + [(b, 256) for b in batches if b != 2]
    rows = []
    for batch, seq in points:
        before = matmul_peak()
        run = run_side(
            "sft",
            "tunelab",
            [*steps, "--batch", str(batch), "--seq", str(seq)],
            log_dir / f"scaling-{batch}x{seq}.log",
        )
        peak = (before + matmul_peak()) / 2
        r = run.result
        rows.append(
            {
                "batch": batch,
                "seq": seq,
                "target_tok_s": r["figure"],
                "tok_s": sum(r["tokens"]) / sum(r["step_s"]),
                "peak_rss_mb": run.peak_rss_mb,
                "mfu": r["flops_per_s"] / 1e9 / peak,
                "matmul_peak_gflops": peak,
            }
        )
        print(f"scaling {batch} x {seq}: {rows[-1]}", flush=True)
    return {"workload": "scaling", "points": rows, "date": time.strftime("%Y-%m-%d %H:%M")}


SFT_SETTINGS = {  # (side, its settings): each run once, 1 warm-up + 2 steps; the fastest of a side is its best
    "tunelab": [[], ["data.group_by_length=true"]],
    "trl": [
        ["gradient_checkpointing=false"],
        ["gradient_checkpointing=false", "train_sampling_strategy=group_by_length"],
        ["gradient_checkpointing=false", "padding_free=true"],
    ],
}


def sft_settings(log_dir) -> dict:
    """Which settings make each side fastest on SFT-LoRA (run once, by hand: `python -m bench sft_settings`)."""
    found = []
    for side, options in SFT_SETTINGS.items():
        for i, opts in enumerate(options):
            flag = "--tl" if side == "tunelab" else "--trl"
            run = run_side(
                "sft",
                side,
                ["--steps", "2", "--warmup", "1", flag, *opts],
                log_dir / f"settings-{side}-{i}.log",
            )
            found.append(
                {
                    "side": side,
                    "settings": opts,
                    "target_tok_s": run.result["figure"],
                    "peak_rss_mb": run.peak_rss_mb,
                }
            )
            print(found[-1], flush=True)
    return {
        "workload": "sft_settings",
        "runs": found,
        "matmul_peak_gflops": matmul_peak(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def scaling_table(s: dict) -> str:
    lines = [
        "| rows x tokens | tokens/s (all) | target tokens/s | peak RSS | MFU | matmul peak |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p in s["points"]:
        lines.append(
            f"| {p['batch']} x {p['seq']} | {p['tok_s']:.0f} | {p['target_tok_s']:.0f} | "
            f"{p['peak_rss_mb'] / 1024:.2f} GB | {100 * p['mfu']:.0f}% | {p['matmul_peak_gflops']:.0f} GFLOP/s |"
        )
    return "\n".join(lines)


def latest(out_dir: Path, names: list[str]) -> str:
    """The table of every workload's newest result in `out_dir` (a rerun of one workload updates its rows)."""
    found = {
        n: json.loads((out_dir / f"{n}.json").read_text()) for n in names if (out_dir / f"{n}.json").is_file()
    }
    summaries = [found[n] for n in names if n in found and "sides" in found[n]]
    lines = [
        "Each row: medians of interleaved rounds (tunelab, other, tunelab, other), each side in its own process;",
        "dates are when each workload ran (`python -m bench WORKLOAD` reruns one).",
        "",
    ]
    if summaries:
        lines += [
            table(summaries),
            "",
            "Measured: " + ", ".join(f"{s['workload']} {s['date']}" for s in summaries),
            "",
        ]
    if "scaling" in found:
        lines += [
            f"SFT-LoRA scaling (tunelab, {found['scaling']['date']}):",
            "",
            scaling_table(found["scaling"]),
            "",
        ]
    return "\n".join([*lines, f"MFU: {MFU_FORMULA}"]) + "\n"


def main(argv=None) -> None:
    names = [*workloads(False), "scaling", "sft_settings"]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workloads", nargs="*", default=[], metavar="WORKLOAD", help=", ".join(names))
    ap.add_argument("--quick", action="store_true", help="few steps, small sizes, one round")
    ap.add_argument(
        "--rounds", type=int, default=None, help="A B rounds per workload (default 2; --quick: 1)"
    )
    ap.add_argument(
        "--omp-wait",
        choices=sorted(OMP_WAIT),
        default="active",
        help="OpenMP's wait policy for both sides: active (its default) or passive (a machine shared with other jobs)",
    )
    a = ap.parse_args(argv)
    # the parent's matmul peak is measured under the children's environment (torch is not loaded yet)
    os.environ.update({**CHILD_ENV, **OMP_WAIT[a.omp_wait]})
    chosen = a.workloads or names[:-1]  # sft_settings only when asked for
    unknown = [n for n in chosen if n not in names]
    if unknown:
        ap.error(f"unknown workload {', '.join(unknown)}; choose from {', '.join(names)}")
    rounds = a.rounds or (1 if a.quick else 2)
    scratch = Path(tempfile.gettempdir()) / "tunelab-bench"
    out_dir = scratch / "quick" if a.quick else RESULTS  # a smoke check's numbers stay out of the repository
    log_dir = scratch / ("quick" if a.quick else "full") / "logs"  # each side's output
    out_dir.mkdir(parents=True, exist_ok=True)
    defined = workloads(a.quick)
    summaries, scale = [], None
    for name in chosen:
        if name == "sft_settings":
            (out_dir / "sft_settings.json").write_text(json.dumps(sft_settings(log_dir), indent=1) + "\n")
            continue
        if name == "scaling":
            scale = scaling(a.quick, log_dir)
            (out_dir / "scaling.json").write_text(json.dumps(scale, indent=1) + "\n")
            continue
        work = defined[name]
        runs, peaks = [], [matmul_peak()]
        for r in range(rounds):
            for side in work.sides:  # A B A B: drift of a shared machine falls on every side alike
                run = run_side(work.module, side, work.args, log_dir / f"{name}-{side}-{r}.log")
                print(
                    f"{name} round {r} {side}: {run.result['figure']:.4g} {work.unit}, "
                    f"peak RSS {run.peak_rss_mb:.0f} MB",
                    flush=True,
                )
                runs.append(run)
            peaks.append(matmul_peak())
        summary = {**summarise(work, runs, peaks), "omp_wait": a.omp_wait}
        (out_dir / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")
        summaries.append(summary)
        print(table([summary]).splitlines()[-1], flush=True)
    command = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])
    print(f"\nthis run ({command}):\n\n" + (table(summaries) if summaries else "") + "\n")
    text = latest(out_dir, names)
    (out_dir / "latest.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
