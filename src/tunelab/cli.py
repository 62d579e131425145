"""The `tunelab` command line. Each command parses its arguments here and calls into the package;
heavy libraries are imported inside the handlers so `tunelab --help` answers at once.

Errors the user can fix (`TunelabError`) print one paragraph and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from tunelab import __version__

EPILOG = """Model references: smollm2-135m (embedded), tiny:llama | tiny:qwen2 | tiny:gpt2, an HF folder,
a .gguf file, or a PEFT adapter folder. Each command has --help."""


def _offline_defaults() -> None:
    """Offline is the normal case: never let a library reach for the hub unless asked to."""
    if os.environ.get("TUNELAB_ONLINE") != "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def cmd_generate(args: argparse.Namespace) -> int:
    from tunelab.data.render import RenderOptions
    from tunelab.generation import generate
    from tunelab.models.load import load_model

    _quiet_hf()
    model, tok = load_model(args.model, adapter=args.adapter)
    opts = RenderOptions(separator=args.separator, system=args.system)
    (text,) = generate(
        model,
        tok,
        [args.prompt],
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        opts=opts,
        seed=args.seed,
    )
    print(text)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tunelab.data.check import build_report, print_report
    from tunelab.data.read import check_kind
    from tunelab.data.render import RenderOptions
    from tunelab.models.load import load_tokenizer

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
        report = build_report(
            path,
            args.kind,
            None if args.model in ("none", "") else get_tok,
            args.max_len,
            args.overlong,
            opts,
        )
        print_report(report, console, args.max_len, args.overlong, show_problems=args.action == "check")
        worst = max(worst, 1 if report.problems else 0)
    return worst if args.action == "check" else 0


def split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG.yaml] [key=value ...]`: the config file is the first item without '='."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def stage_command(stage: str):
    def run(args: argparse.Namespace) -> int:
        import importlib

        from tunelab.config import load_config
        from tunelab.errors import TunelabError

        path, overrides = split_config_args(args.config)
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise TunelabError(
                f"'{bad[0]}' is not a key=value override (only the first argument may be a config file)."
            )
        schema = importlib.import_module("tunelab.schema")
        cfg = load_config(getattr(schema, STAGES[stage][0]), path, overrides)
        _quiet_hf()
        importlib.import_module(f"tunelab.stages.{stage}").main(cfg)
        return 0

    return run


def _quiet_hf() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


STAGES = {
    "pretrain": ("PretrainConfig", "next-token training on raw text, packed into fixed-length blocks"),
    "sft": (
        "SFTConfig",
        "supervised fine-tuning on X->Y pairs or chats; adapter: none|lora|dora|prompt|prefix",
    ),
}


def cmd_doctor(args: argparse.Namespace) -> int:
    from tunelab.doctor import run_doctor

    return run_doctor()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunelab",
        description="tunelab: tune LLMs, and find the cheapest way that is good enough.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tunelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for stage, (_, help_text) in STAGES.items():
        p = sub.add_parser(
            stage, help=help_text, description=f"{help_text}. Example config: configs/{stage}.yaml"
        )
        p.add_argument(
            "config",
            nargs="*",
            metavar="[CONFIG.yaml] [key=value ...]",
            help="optional YAML config, then dotted overrides such as train.lr=1e-5 adapter=lora",
        )
        p.set_defaults(func=stage_command(stage))

    gen = sub.add_parser("generate", help="try a model or adapter by hand: print its answer to a prompt")
    gen.add_argument(
        "model", help="model reference (smollm2-135m, tiny:llama, HF folder, .gguf, adapter folder)"
    )
    gen.add_argument("prompt", help="the prompt; the chat template is applied when the model has one")
    gen.add_argument("--adapter", help="a PEFT adapter folder to put on the model")
    gen.add_argument("--max-new-tokens", type=int, default=128, help="most tokens to generate (default 128)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass when sampling")
    gen.add_argument("--system", help="system message (chat models)")
    gen.add_argument(
        "--separator",
        default="\n### Answer:\n",
        help="prompt/answer separator for models without a chat template",
    )
    gen.add_argument("--seed", type=int, default=0, help="sampling seed")
    gen.set_defaults(func=cmd_generate)

    data = sub.add_parser("data", help="validate and inspect data: data check|stats PATH... --kind KIND")
    data.add_argument(
        "action", choices=["check", "stats"], help="check: every problem, then a summary; stats: summary only"
    )
    data.add_argument("paths", nargs="+", metavar="PATH", help="JSONL / JSON / Parquet / CSV files")
    data.add_argument("--kind", required=True, help="text | pairs | chat | preference | prompts | judgments")
    data.add_argument(
        "--model",
        default="smollm2-135m",
        help="tokenizer to count and render with ('none' = characters only)",
    )
    data.add_argument("--max-len", type=int, default=1024, help="longest sequence in tokens (default 1024)")
    data.add_argument(
        "--overlong",
        choices=["truncate", "drop"],
        default="truncate",
        help="what training does with longer rows",
    )
    data.add_argument(
        "--separator",
        default="\n### Answer:\n",
        help="prompt/completion separator for models without a chat template",
    )
    data.set_defaults(func=cmd_data)

    doctor = sub.add_parser("doctor", help="versions, the embedded model, known-bad combinations")
    doctor.set_defaults(func=cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    _offline_defaults()
    from tunelab.errors import TunelabError

    try:
        return args.func(args)
    except TunelabError as err:
        print(f"tunelab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
