"""`tunelab plan ... --devices N`: the plan for several devices (tunelab/plan_cluster.py), as a table or JSON.

tunelab plan llama/config.json --devices 64 --gpu H100 --seq-len 4096 --batch-size 1
tunelab plan llama/config.json --devices 8 --strategy fsdp zero3 --precision bf16 --json
"""

from __future__ import annotations

import argparse
import json

CLUSTER_FLAGS = (
    "devices",
    "strategy",
    "precision",
    "offload",
    "gpu",
    "device_memory",
    "peak_tflops",
    "mfu",
    "json",
    "checkpointing",
    "grad_accum",
)


def add_cluster_arguments(plan: argparse.ArgumentParser) -> None:
    from tunelab.plan_cluster import GPUS, STRATEGIES

    group = plan.add_argument_group(
        "several devices", "any of these plans per device, by strategy and precision (no weights are loaded)"
    )
    group.add_argument("--devices", type=int, help="devices (GPUs) in data parallel (default 1)")
    group.add_argument(
        "--strategy", nargs="+", choices=STRATEGIES, help="strategies to plan (default: all of them)"
    )
    group.add_argument(
        "--precision",
        nargs="+",
        choices=["fp32", "bf16", "fp16"],
        help="bf16/fp16: mixed-precision Adam (16-bit weights and gradients, fp32 master weights and moments); default bf16",
    )
    group.add_argument(
        "--offload",
        nargs="+",
        choices=["none", "optimizer", "params"],
        help="also plan with optimizer states (or weight shards too) in host memory",
    )
    group.add_argument(
        "--gpu",
        choices=[*GPUS, "cpu"],
        help="device for the peak FLOP/s and memory (default H100; cpu: this machine, measured now)",
    )
    group.add_argument("--device-memory", type=float, help="GB per device (default: the --gpu's)")
    group.add_argument(
        "--peak-tflops", type=float, help="the device's dense peak TFLOP/s (default: the table)"
    )
    group.add_argument("--mfu", type=float, help="share of the peak a step reaches (default 0.40 on GPUs)")
    group.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    group.add_argument(
        "--checkpointing",
        action="store_true",
        help="count activations with activation checkpointing in the totals",
    )
    group.add_argument("--json", action="store_true", help="print the rows as JSON, for scripts")


def cluster_asked(args: argparse.Namespace) -> bool:
    return any(getattr(args, flag, None) not in (None, False) for flag in CLUSTER_FLAGS)


def cmd_plan_cluster(args: argparse.Namespace) -> int:
    from tunelab.console import table as console_table
    from tunelab.console import table_console
    from tunelab.plan_cluster import STRATEGIES, cluster_rows, load_config

    config = load_config(args.model)
    devices = args.devices or 1
    gpu = args.gpu or "H100"
    rows, assumed = cluster_rows(
        config,
        methods=args.method or ["full", "lora"],
        strategies=args.strategy or list(STRATEGIES),
        precisions=args.precision or ["bf16"],
        devices=devices,
        gpu=gpu,
        device_memory=args.device_memory,
        peak=args.peak_tflops,
        mfu=args.mfu,
        offloads=args.offload,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        grad_accum=args.grad_accum or 1,
        lora_r=args.lora_r,
        prompt_tokens=args.prompt_tokens,
        checkpointing=args.checkpointing,
    )
    if args.json:
        print(json.dumps([{**r.as_dict(), "assumptions": assumed} for r in rows], indent=1))
        return 0
    params = rows[0].parameters
    title = (
        f"plan: {args.model} ({params / 1e9:.2f}B parameters), {devices} x {gpu} "
        f"({assumed['device_memory_gb']:g} GB), micro-batch {args.batch_size} x {args.seq_len} tokens per device"
    )
    parts = ("parameters", "gradients", "optimizer", "gathered", "activations", "logits")
    columns = [
        "method",
        "strategy",
        "prec.",
        "offload",
        *parts,
        "GB/device",
        "with ckpt",
        "s/step",
        "with ckpt",
        "fits",
    ]
    table = console_table(title, columns)
    for r in rows:
        fits = (
            "yes"
            if r.fits
            else ("ckpt" if r.per_device_gb_checkpointed <= assumed["fits_below_gb"] else "no")
        )
        table.add_row(
            r.method,
            r.strategy + (" *" if r.cheapest else ""),
            r.precision,
            r.offload,
            *(f"{r.memory_gb[p]:.2f}" for p in parts),
            f"{r.per_device_gb:.1f}",
            f"{r.per_device_gb_checkpointed:.1f}",
            f"{r.seconds_per_step:.2f}" if r.seconds_per_step else "n/a",
            f"{r.seconds_per_step_checkpointed:.2f}" if r.seconds_per_step_checkpointed else "n/a",
            fits,
        )
    console = table_console()
    console.print(table)
    console.print(
        f"GB = 10^9 bytes per device; 'activations' {'with' if args.checkpointing else 'without'} activation "
        f"checkpointing, 'with ckpt' the total with it; fits = at most {assumed['fits_below_gb']:g} GB "
        f"(90% of the device). Time: {'; '.join(assumed['peaks'].values())}, at an assumed MFU of "
        f"{assumed['mfu']:.0%}; communication assumed hidden behind compute."
    )
    for method in args.method or ["full", "lora"]:
        pick = next((r for r in rows if r.cheapest and r.method == method), None)
        if pick is None:
            console.print(
                f"{method}: nothing fits {devices} x {assumed['device_memory_gb']:g} GB: more devices, offload, or a shorter micro-batch."
            )
            continue
        more = f" ({'; '.join(pick.notes)})" if pick.notes else ""
        host = f", {pick.host_gb:.1f} GB host memory per device" if pick.host_gb else ""
        console.print(
            f"{method}: cheapest that fits = [bold]{pick.strategy}[/bold] {pick.precision}"
            + (f" offload {pick.offload}" if pick.offload != "none" else "")
            + f"{more}{host}; run it with {pick.run_with}"
        )
    return 0
