"""`tunelab ladder | quickstart | plan`: every method on one task, and the estimate before a run."""

from __future__ import annotations

import argparse

from tunelab.commands import quiet_hf, split_config_args


def _flatten(tree: dict, prefix: str = "") -> list[str]:
    """{"lora": {"steps": 5}} -> ["lora.steps=5"] (values as YAML, so lists and strings survive)."""
    import yaml

    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append(
                f"{prefix}{key}=" + yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...")
            )
    return [o.strip() for o in out]


def ladder_config(task: str | None, overrides: list[str], defaults: list[str] | None = None):
    """A LadderConfig: defaults, then the task file's `ladder:` block, then the command line."""
    from pathlib import Path

    import yaml

    from tunelab.config import load_config
    from tunelab.config.schema import LadderConfig
    from tunelab.errors import TunelabError

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise TunelabError(f"'{bad[0]}' is not a key=value override (only the first argument is the task).")
    from_task: list[str] = []
    if task and Path(task).suffix in (".yaml", ".yml") and Path(task).is_file():
        block = (yaml.safe_load(Path(task).read_text()) or {}).get("ladder") or {}
        from_task = _flatten(block)
    head = [f"task={task}"] if task else []
    return load_config(LadderConfig, None, [*(defaults or []), *head, *from_task, *overrides])


def cmd_ladder(args: argparse.Namespace) -> int:
    from tunelab.ladder.run import main as ladder_main

    task, overrides = split_config_args(args.config)
    cfg = ladder_config(task, overrides)
    quiet_hf()
    ladder_main(cfg)
    return 0


QUICKSTART = [  # budgets that fit `make demo` in 15 minutes on a 2-core CPU, set-up included (README)
    "model=smollm2-135m",
    "task=extract",
    "rungs=[zero_shot,few_shot,prompt_tuning,lora,full]",  # + best_of_n: 4.4 more minutes (README)
    *(  # each training rung stops on its validation metric; steps and seconds are caps
        f"{rung}.{key}={value}"
        for rung in ("prompt_tuning", "lora", "full")
        for key, value in (("steps", 40), ("seconds", 150), ("eval_every", 4), ("patience", 3))
    ),
    "validation.rows=32",  # 16 rows and patience 2 stopped LoRA on one noisy row (docs/ladder.md)
    "eval.limit=100",
    "eval.train_limit=8",
    "keep_models=none",  # a demo of the decision: its report, not 513 MB of full fine-tuning (.cmd retrains)
    "out=runs/quickstart",
]


def cmd_quickstart(args: argparse.Namespace) -> int:
    from tunelab.ladder.run import main as ladder_main

    cfg = ladder_config(None, args.overrides, QUICKSTART)
    quiet_hf()
    ladder_main(cfg)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from tunelab.commands.plan import cluster_asked, cmd_plan_cluster
    from tunelab.console import table as console_table
    from tunelab.console import table_console
    from tunelab.plan import data_fit, data_tokens, estimate, machine_gflops, pretraining_data
    from tunelab.plan_cluster import load_config

    quiet_hf()
    if cluster_asked(args):
        return cmd_plan_cluster(args)
    config = load_config(args.model)  # the config is all the estimate reads: no weights are loaded
    gflops = machine_gflops()
    table = console_table(
        f"plan: {args.model}, batch {args.batch_size} x {args.seq_len} tokens, fp32 AdamW",
        (
            "method",
            "trainable",
            "weights",
            "grads+optim",
            "activations",
            "logits",
            "runtime",
            "total MB",
            "s/step",
            f"{args.steps} steps",
        ),
    )
    for method in args.method or ["full", "lora", "prompt"]:
        p = estimate(
            config,
            method,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            lora_r=args.lora_r,
            prompt_tokens=args.prompt_tokens,
            gflops=gflops,
        )
        table.add_row(
            method,
            f"{p.trainable:,}",
            *(
                f"{v:,.0f}"
                for v in (
                    p.weights_mb,
                    p.grads_optimizer_mb,
                    p.activations_mb,
                    p.logits_mb,
                    p.runtime_mb,
                    p.total_mb,
                )
            ),
            f"{p.seconds_per_step:.2f}",
            f"{p.seconds_per_step * args.steps / 60:.1f} min",
        )
    console = table_console()
    console.print(table)
    data = pretraining_data(p.params)
    console.print(
        f"machine: {gflops:.0f} GFLOP/s fp32 matmul now. Pre-training {p.params / 1e6:.0f}M parameters from scratch, "
        f"compute-optimally (~20 tokens per parameter; twice the parameters want twice the data): "
        f"{_count(data['tokens'])} tokens, ~{data['disk_gb']:.3g} GB of text."
    )
    if args.data:
        tokens, how = data_tokens(args.data)
        fit = data_fit(tokens, p.params)
        advice = (
            "enough for one compute-optimal pass"
            if fit["coverage"] >= 1
            else f"{fit['epochs_needed']:.1f} epochs to reach it"
            + (
                ""
                if fit["epochs_needed"] <= 4
                else " (beyond ~4 epochs, repeated data helps little: get more data or a smaller model)"
            )
        )
        console.print(
            f"data: {_count(tokens)} tokens ({how}) train ~{_count(fit['optimal_params'])} parameters "
            f"compute-optimally; {args.model} ({_count(p.params)} parameters) wants {_count(fit['tokens_needed'])}: "
            f"the data covers {fit['coverage']:.1%}, {advice}."
        )
    return 0


def _count(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"
