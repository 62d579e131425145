"""tunelab vs TRL (and HF generate), side by side on this machine: `python -m bench [WORKLOAD ...] [--quick]`.

    python -m bench                      # every workload, 2 rounds each, every side at each of its precisions
    python -m bench sft_lora grpo        # some of them
    python -m bench --quick              # few steps, small sizes, one round: a smoke check (results in $TMPDIR)
                                         # that also estimates how long the full run of those workloads takes
    python -m bench --omp-wait passive   # on a machine that other jobs keep busy
    make bench                           # the same as `python -m bench`

Workloads: sft_lora, sft_full, rm, dpo, grpo, gen, scaling. Each side runs at each of its precisions:
TRL with `bf16=True` and `bf16=False`, HF generate with bf16 and fp32 weights, tunelab with
`train.precision=auto` and `fp32`. What `auto` resolves to is asked of tunelab once, in a fresh process
(`tunelab.models.precision.resolve('auto')`; fp32 assumed, and said, if that cannot be imported); where it
resolves to fp32 the auto side is the fp32 run, measured once ("auto = fp32 here (measured bf16 X vs
fp32 Y GFLOP/s)"). A tunelab without the `train.precision` key stops a full run with a message; `--quick`
then runs tunelab's sides without the override and says so. The speed-up is tunelab's fastest precision
against the other side's fastest, memory at those settings; MFU is against the matmul peak of the
precision a run computed in (fp32 and bf16 peaks measured before and after every round).

Each side of each round runs in its own process (its peak RSS from os.wait4); the sides alternate
A B A B (same precision side by side) so a shared machine's drift falls on both. Where the bf16 peak is
under half the fp32 one (a CPU without AMX or AVX-512 BF16, where bf16 is ~5x slower), every bf16 side runs
one round with no warm-up step (the same measured steps; too slow to be a side's fastest, and it keeps
the full run near 50 minutes on 2 cores), and HF's one-prompt-at-a-time side generates for the first 16
of the 64 prompts (its rate does not depend on how many; alone it would take ~13 min there); the result
files say so. Estimated there from the 2026-11-28 fp32 run (33 min): + 17 min of bf16 sides if a bf16 step
takes 3x an fp32 one, + 27 min at the full 5x. `--quick` prints its own estimate of the full run. Figures are medians over rounds.
Every result records the CPU (lscpu model, cores, amx_bf16 / amx_tile / avx512_bf16 / avx512f / avx2).
Writes bench/results/<workload>.json and bench/results/latest.md (the newest result of every workload)
and prints the tables; each side's output goes to $TMPDIR/tunelab-bench/.
Needs the `bench` extra: pip install -e '.[bench]' (TRL), with torch pinned as in the Makefile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import (
    CHILD_ENV,
    FULL_STEPS,
    MFU_FORMULA,
    OMP_WAIT,
    RESULTS,
    Run,
    Variant,
    Workload,
    cpu_info,
    cpu_line,
    matmul_peak,
    matmul_peaks,
    plan,
    precision_table,
    probe_precision,
    run_side,
    summarise,
    table,
)

# Each side's fastest SFT setting found here (`python -m bench sft_settings`; bench/results/sft_settings.json):
# TRL without gradient checkpointing and padding-free (rows laid end to end; under SDPA transformers keeps
# them apart with a block-diagonal mask made from the restarting position ids); tunelab grouping rows by length.
TRL_SFT_BEST = ["gradient_checkpointing=false", "padding_free=true"]
TUNELAB_SFT = ["data.group_by_length=true"]


QUICK_STEPS, WARMUP = 1, 1  # measured steps of a --quick side, and every side's warm-up steps
# A GRPO step's time follows its longest sampled completion, so steps differ by what was drawn (3.4-5.1 s
# in one run): its median takes 4 measured steps (2 gave 2.81x and 3.01x on the same code)
GRPO_STEPS = 4
# a full gen side's work over a --quick one's: 4x the prompts, 2x the new tokens (an upper bound)
GEN_SCALE = 8.0


def workloads(quick: bool) -> dict[str, Workload]:
    def measured(n: int) -> list[str]:
        return ["--steps", str(QUICK_STEPS if quick else n), "--warmup", str(WARMUP)]

    steps = measured(FULL_STEPS)
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
                measured(GRPO_STEPS),
                unit="s/step",
                higher_is_better=False,
                goal=3.0,
                full_steps=GRPO_STEPS,
            ),
            Workload(
                "gen",
                f"eval generation, greedy, {16 if quick else 64} prompts x <= {32 if quick else 64} new tokens",
                "gen",
                ["tunelab", "hf_batched", "hf_single"],
                ["--prompts", "16", "--new", "32"] if quick else [],
                unit="new tok/s",
                # one prompt at a time, so its rate does not depend on how many (the first 16 keep the mix)
                shorter={"hf_single": (["--prompts", "16"], 0.25, "the first 16 prompts of the 64")},
            ),
        ]
    }


def scaling(quick: bool, log_dir, auto: dict) -> dict:
    """tunelab SFT-LoRA at `auto` as rows get longer (batch 2) and as the batch grows (256-token rows)."""
    lengths = [256, 512] if quick else [256, 512, 1024, 2048]
    batches = [1, 2] if quick else [1, 2, 4, 8]
    steps = ["--steps", "1" if quick else "2", "--warmup", "1"]
    points = [(2, n) for n in lengths] + [(b, 256) for b in batches if b != 2]
    precision = ["--precision", "auto"] if auto["key"] else []
    dtype = auto["name"] if auto["key"] and auto["name"] in ("fp32", "bf16") else "fp32"
    rows = []
    for batch, seq in points:
        before = matmul_peak(dtype=dtype)
        run = run_side(
            "sft",
            "tunelab",
            [*steps, "--batch", str(batch), "--seq", str(seq), *precision],
            log_dir / f"scaling-{batch}x{seq}.log",
        )
        peak = (before + matmul_peak(dtype=dtype)) / 2
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
                "precision": dtype,
            }
        )
        print(f"scaling {batch} x {seq}: {rows[-1]}", flush=True)
    return {
        "workload": "scaling",
        "points": rows,
        "cpu": cpu_info(),
        "auto": auto,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


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
        "cpu": cpu_info(),
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
    """The tables of every workload's newest result in `out_dir` (a rerun of one workload updates its rows),
    under the CPU each was measured on."""
    found = {
        n: json.loads((out_dir / f"{n}.json").read_text()) for n in names if (out_dir / f"{n}.json").is_file()
    }
    cpus = {}  # CPU line -> the workloads measured on it
    for n, s in found.items():
        cpus.setdefault(cpu_line(s["cpu"]) if "cpu" in s else "not recorded", []).append(n)
    summaries = [found[n] for n in names if n in found and "sides" in found[n]]
    lines = [f"CPU: {line} ({', '.join(ns)})" for line, ns in cpus.items()]
    lines += [
        "",
        "Each row: each side at its fastest precision (tunelab: auto or fp32; TRL: bf16=True or False; HF",
        "generate: bf16 or fp32 weights), medians of interleaved rounds, each side in its own process;",
        "dates are when each workload ran (`python -m bench WORKLOAD` reruns one).",
        "",
    ]
    if summaries:
        lines += [table(summaries), ""]
        if any("precisions" in side for s in summaries for side in s["sides"].values()):
            lines += ["Every side at every precision it ran in (its fastest in bold):", ""]
            lines += [precision_table(summaries), ""]
        notes = [f"- {s['workload']}: {note}" for s in summaries for note in s.get("notes", [])]
        lines += [*notes, "", "Measured: " + ", ".join(f"{s['workload']} {s['date']}" for s in summaries), ""]
    if "scaling" in found:
        lines += [
            f"SFT-LoRA scaling (tunelab, {found['scaling']['date']}):",
            "",
            scaling_table(found["scaling"]),
            "",
        ]
    return "\n".join([*lines, f"MFU: {MFU_FORMULA}"]) + "\n"


def side_args(work: Workload, v: Variant, with_key: bool) -> list[str]:
    """The child's arguments for one side at one precision."""
    args = list(work.args)
    if v.short:  # bf16 where it is slow: no warm-up step, and whatever less the workload's side does
        if "--warmup" in args:
            args[args.index("--warmup") + 1] = "0"
        args += work.shorter.get(v.side, ([], 1.0, ""))[0]
    if v.side != "tunelab" or with_key:  # without the key: a smoke check of tunelab's own fp32
        args += ["--precision", v.asked]
    return args


def full_seconds(run: Run, full: Variant, scale: float, steps: int) -> float:
    """How long `run` (a --quick side) would take in the full run: its start-up as measured, its work scaled
    (training: the full run's warm-up + measured steps at its median step; generation: `scale` x the batch)."""
    r = run.result
    if "step_s" in r and isinstance(r["step_s"], list) and r["step_s"]:
        step = statistics.median(r["step_s"])
        done = step * (WARMUP + QUICK_STEPS)
        todo = step * ((0 if full.short else WARMUP) + steps)
    else:
        done = r["seconds"]
        todo = done * scale
    return (run.wall_s - done + todo) * full.rounds


def estimate(work: Workload, runs: list[Run], auto: dict, peaks: dict) -> dict:
    """From a --quick run: the full run's seconds for this workload (2 rounds, the same precision plan)."""
    full, _ = plan(work, auto, peaks, rounds=2)
    seconds = 4.0 * (max(v.rounds for v in full) + 1) * 1.05  # both matmul peaks (2 s each) per round + 1
    per_side = {}
    for v in full:
        quick = next((r for r in runs if (r.variant.side, r.variant.asked) == (v.side, v.asked)), None)
        if quick is not None:
            share = work.shorter.get(v.side, ([], 1.0, ""))[1] if v.short else 1.0
            scale = GEN_SCALE * share if work.module == "gen" else 1.0
            per_side[f"{v.side} {v.label}"] = full_seconds(quick, v, scale, work.full_steps)
    return {"seconds": seconds + sum(per_side.values()), "per_side_s": per_side}


def run_workload(
    work: Workload, rounds: int, auto: dict, log_dir: Path
) -> tuple[list[Run], list[dict], list[Variant], list[str]]:
    """Every side at each of its precisions, A B A B, the peaks of both precisions before and after each round."""
    peaks = [matmul_peaks()]
    variants, notes = plan(work, auto, peaks[0], rounds)
    if not auto["key"]:
        notes.append(
            "smoke check only: this tunelab has no train.precision key, so its sides ran without the "
            "override (its own fp32)"
        )
    runs = []
    for r in range(max(v.rounds for v in variants)):
        for v in variants:  # same precision side by side: drift of a shared machine falls on every side alike
            if r >= v.rounds:
                continue
            args = side_args(work, v, auto["key"])
            log = log_dir / f"{work.name}-{v.side}-{v.asked}-{r}.log"
            run = run_side(work.module, v.side, args, log)
            run.variant = v
            print(
                f"{work.name} round {r} {v.side} {v.label}: {run.result['figure']:.4g} {work.unit}, "
                f"peak RSS {run.peak_rss_mb:.0f} MB, {run.wall_s:.0f} s",
                flush=True,
            )
            runs.append(run)
        peaks.append(matmul_peaks())
    return runs, peaks, variants, notes


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
    # the parent's matmul peaks are measured under the children's environment (torch is not loaded yet)
    os.environ.update({**CHILD_ENV, **OMP_WAIT[a.omp_wait]})
    chosen = a.workloads or names[:-1]  # sft_settings only when asked for
    unknown = [n for n in chosen if n not in names]
    if unknown:
        ap.error(f"unknown workload {', '.join(unknown)}; choose from {', '.join(names)}")
    rounds = a.rounds or (1 if a.quick else 2)
    cpu, auto = cpu_info(), probe_precision()
    print(f"CPU: {cpu_line(cpu)}\ntunelab auto -> {auto['name']} ({auto['why']})", flush=True)
    if not auto["key"]:
        message = (
            "this tunelab does not take train.precision "
            f"({auto.get('key_error', '?')}): the benchmark runs tunelab at auto and fp32 through that key."
        )
        if not a.quick:
            sys.exit(f"bench: {message} Install a tunelab that has it, or run --quick for a smoke check.")
        print(f"warning: {message} --quick: tunelab's sides run without it (its own fp32).", flush=True)
    scratch = Path(tempfile.gettempdir()) / "tunelab-bench"
    out_dir = scratch / "quick" if a.quick else RESULTS  # a smoke check's numbers stay out of the repository
    log_dir = scratch / ("quick" if a.quick else "full") / "logs"  # each side's output
    out_dir.mkdir(parents=True, exist_ok=True)
    defined = workloads(a.quick)
    command = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])
    summaries, estimated, started = [], 0.0, time.perf_counter()
    for name in chosen:
        if name == "sft_settings":
            (out_dir / "sft_settings.json").write_text(json.dumps(sft_settings(log_dir), indent=1) + "\n")
            continue
        if name == "scaling":
            scale = scaling(a.quick, log_dir, auto)
            (out_dir / "scaling.json").write_text(json.dumps(scale, indent=1) + "\n")
            continue
        work = defined[name]
        runs, peaks, variants, notes = run_workload(work, rounds, auto, log_dir)
        summary = {
            **summarise(work, runs, peaks, variants, notes),
            "omp_wait": a.omp_wait,
            "cpu": cpu,
            "auto": auto,
            "command": command,
        }
        if a.quick:
            summary["estimate_full"] = estimate(work, runs, auto, peaks[0])
            estimated += summary["estimate_full"]["seconds"]
            print(
                f"{name}: the full run would take ~{summary['estimate_full']['seconds'] / 60:.1f} min",
                flush=True,
            )
        (out_dir / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")
        summaries.append(summary)
        print(table([summary]).splitlines()[-1], flush=True)
    print(f"\nthis run ({command}, {(time.perf_counter() - started) / 60:.1f} min):\n")
    if summaries:
        print(table(summaries) + "\n\n" + precision_table(summaries) + "\n")
    if estimated:
        print(f"estimated full run of these workloads (without --quick): ~{estimated / 60:.0f} min\n")
    text = latest(out_dir, names)
    (out_dir / "latest.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
