"""`tunelab data check | stats | clean | dedup | tokenize`: validate data, and prepare pre-training text."""

from __future__ import annotations

import argparse
import os

from tunelab.commands import quiet_hf

PREP_ACTIONS = ("clean", "dedup", "tokenize")


def cmd_data_prep(args: argparse.Namespace) -> int:
    """data clean|dedup|tokenize IN... --out DIR [key=value ...]: pre-training data, streamed."""
    from pathlib import Path

    from tunelab.config import load_config
    from tunelab.console import table_console
    from tunelab.data.prep.report import show
    from tunelab.errors import TunelabError

    overrides = [p for p in args.paths if "=" in p and not Path(p).exists()]
    inputs = [p for p in args.paths if p not in overrides]
    if not args.out:
        raise TunelabError(f"data {args.action} writes its output to a folder: pass --out DIR.")
    if not inputs:
        raise TunelabError(f"data {args.action}: no input files or folders given.")
    out, console = Path(args.out), table_console(stderr=True)
    if any(Path(p).resolve() == out.resolve() for p in inputs):
        raise TunelabError(f"--out {out} is also an input: write to another folder.")
    workers = args.workers or min(os.cpu_count() or 1, 8)
    common = {"workers": workers, "console": console}
    if args.action == "tokenize":
        if overrides or args.config:
            raise TunelabError("data tokenize takes no settings besides --model and --workers.")
        from tunelab.data.prep.tokenize import run_tokenize
        from tunelab.models.load import load_tokenizer

        quiet_hf()
        report = run_tokenize(inputs, out, load_tokenizer(args.model), model=args.model, **common)
    else:
        from tunelab.data.prep import config as prep_config

        cls = prep_config.CleanConfig if args.action == "clean" else prep_config.DedupConfig
        cfg = load_config(cls, args.config, overrides)
        if args.action == "clean":
            from tunelab.data.prep.clean import run_clean as run
        else:
            from tunelab.data.prep.dedup import run_dedup as run
        report = run(inputs, out, cfg, compress=args.gzip, shard_mb=args.shard_mb, **common)
    show(args.action, report, out, console)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.action in PREP_ACTIONS:
        return cmd_data_prep(args)
    from rich.console import Console

    from tunelab.data.check import build_report, print_report
    from tunelab.data.read import check_kind
    from tunelab.data.render import RenderOptions
    from tunelab.errors import TunelabError
    from tunelab.models.load import load_tokenizer

    if not args.kind:
        raise TunelabError(
            f"data {args.action} needs --kind (text | pairs | chat | preference | prompts | judgments)."
        )
    check_kind(args.kind)
    cache: dict = {}

    def get_tok():
        if "tok" not in cache:
            cache["tok"] = load_tokenizer(args.model)
        return cache["tok"]

    opts = RenderOptions(separator=args.separator)
    console = Console(highlight=False)
    worst = 0
    for path in args.paths:
        get = None if args.model in ("none", "") else get_tok
        report = build_report(path, args.kind, get, args.max_len, args.overlong, opts)
        print_report(report, console, args.max_len, args.overlong, show_problems=args.action == "check")
        worst = max(worst, 1 if report.problems else 0)
    return worst if args.action == "check" else 0
