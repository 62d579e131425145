"""The `tunelab` command line. Each command parses its arguments here and calls into the package;
heavy libraries are imported inside the handlers so `tunelab --help` answers at once.

Errors the user can fix (`TunelabError`) print one paragraph and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from tunelab import __version__
from tunelab.commands import quiet_hf, split_config_args
from tunelab.commands.data import PREP_ACTIONS, cmd_data
from tunelab.commands.export import add_export_parser
from tunelab.commands.keys import add_keys_help
from tunelab.commands.ladder import cmd_ladder, cmd_plan, cmd_quickstart
from tunelab.commands.models import cmd_best_of_n, cmd_generate, cmd_score, cmd_select
from tunelab.commands.plan import add_cluster_arguments

EPILOG = """Model references: smollm2-135m (embedded), tiny:llama | tiny:qwen2 | tiny:gpt2, an HF folder,
a .gguf file, or a PEFT adapter folder. Each command has --help."""

STAGES = {  # command -> (config class in tunelab.config.schema, module with main(cfg), help)
    "pretrain": (
        "PretrainConfig",
        "tunelab.stages.pretrain",
        "next-token training on raw text, packed into fixed-length blocks",
    ),
    "sft": (
        "SFTConfig",
        "tunelab.stages.sft",
        "supervised fine-tuning on X->Y pairs or chats; adapter: none|lora|dora|prompt|prefix",
    ),
    "rm": (
        "RMConfig",
        "tunelab.stages.rm",
        "reward model: Bradley-Terry on preference pairs (prompt, chosen, rejected)",
    ),
    "rl": (
        "RLConfig",
        "tunelab.stages.rl",
        "RL from a reward: algo grpo|rloo|reinforce|ppo; reward rm:PATH|exact|number|regex:|module:fn",
    ),
    "dpo": (
        "DPOConfig",
        "tunelab.stages.dpo",
        "offline preference optimisation (DPO sigmoid or IPO), reference = adapter off",
    ),
    "eval": (
        "EvalConfig",
        "tunelab.eval.main",
        "evaluate a model on a task: strategy zero_shot|rules|cot|reflection|few_shot|self_consistency|best_of_n",
    ),
}


def _offline_defaults() -> None:
    """Offline is the normal case: never let a library reach for the hub unless asked to."""
    if os.environ.get("TUNELAB_ONLINE") != "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


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
        schema = importlib.import_module("tunelab.config.schema")
        cfg = load_config(getattr(schema, STAGES[stage][0]), path, overrides)
        quiet_hf()
        from tunelab.stages.names import check_names

        check_names(cfg)  # every variant name, before any data is read
        importlib.import_module(STAGES[stage][1]).main(cfg)
        return 0

    return run


def cmd_label(args: argparse.Namespace) -> int:
    from tunelab.label import commands

    if args.action == "serve":
        return commands.serve(args.project, args.host, args.port)
    if args.action == "stats":
        return commands.stats(args.project, args.json, args.worst)
    if not args.out:
        from tunelab.errors import TunelabError

        raise TunelabError("label export needs --out FILE (the preference JSONL to write).")
    return commands.export(args.project, args.out, args.judgments)


def cmd_arena(args: argparse.Namespace) -> int:
    from tunelab.arena import main as arena_main

    arena_main(args.files, args.out, rounds=args.rounds, seed=args.seed, prior=args.prior)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from tunelab.doctor import run_doctor

    quiet_hf()
    return run_doctor(load=args.load)


def _config_command(p: argparse.ArgumentParser, config_class: str, func, name: str = "config", **arg) -> None:
    """A command driven by a config class of tunelab.config.schema: its keys in --help, its
    `key=value` arguments (`arg`: metavar and help), and its handler."""
    add_keys_help(p, "tunelab.config.schema", config_class)
    p.add_argument(name, nargs="*", **arg)
    p.set_defaults(func=func)


def _strict_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse a reward model that did not pass its quality gate (gate.json); default: warn",
    )


def _ranking_args(p: argparse.ArgumentParser, temperature: float) -> None:
    """What select and best-of-n share: the prompts answered, how answers are sampled, the gate."""
    p.add_argument("--prompts", required=True, help="prompts file (kind prompts)")
    _sampling_args(p, temperature)
    _strict_arg(p)


def _precision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        dest="compute_precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="the number format forwards compute in (as train.precision; default auto: bf16 where it "
        "is measured clearly faster)",
    )


def _sampling_args(p: argparse.ArgumentParser, temperature: float) -> None:
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest answer in tokens (default 64)")
    p.add_argument(
        "--temperature",
        type=float,
        default=temperature,
        help=f"0 = greedy; > 0 samples (default {temperature})",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed: the same seed gives the same answers")
    p.add_argument("--limit", type=int, help="use only the first N prompts")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunelab",
        description="tunelab: tune LLMs, and find the cheapest way that is good enough.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tunelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for stage, (config_class, _, help_text) in STAGES.items():
        _config_command(
            sub.add_parser(
                stage,
                help=help_text,
                description=f"{help_text}. Example config: configs/{stage}.yaml",
                add_help=False,
            ),
            config_class,
            stage_command(stage),
            metavar="[CONFIG.yaml] [key=value ...]",
            help="optional YAML config, then dotted overrides such as train.lr=1e-5 adapter=lora",
        )

    gen = sub.add_parser("generate", help="try a model or adapter by hand: print its answer to a prompt")
    gen.add_argument(
        "model", help="model reference (smollm2-135m, tiny:llama, HF folder, .gguf, adapter folder)"
    )
    gen.add_argument(
        "prompt", help="the prompt; rendered as in training (chat template when the model has one)"
    )
    gen.add_argument("--adapter", help="a PEFT adapter folder to put on the model")
    gen.add_argument("--max-new-tokens", type=int, default=128, help="most tokens to generate (default 128)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass when sampling")
    gen.add_argument("--system", help="system message (chat models)")
    gen.add_argument("--separator", help="prompt/answer separator for models without a chat template")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed")
    _precision_arg(gen)
    gen.set_defaults(func=cmd_generate)

    score = sub.add_parser("score", help="reward-model scores for answers: score RM FILE")
    score.add_argument("rm", help="a reward model (a `tunelab rm` run's final/)")
    score.add_argument(
        "file", help="rows of prompt + completion, or preference rows (prompt, chosen, rejected)"
    )
    score.add_argument("--out", help="write JSONL here instead of standard output")
    score.add_argument(
        "--batch-size", type=int, default=16, help="answers scored at once (scores do not depend on it)"
    )
    _strict_arg(score)
    _precision_arg(score)
    score.set_defaults(func=cmd_score)

    sel = sub.add_parser("select", help="rank models or checkpoints by mean reward on the same prompts")
    sel.add_argument("--rm", required=True, help="the reward model")
    sel.add_argument(
        "candidates", nargs="+", metavar="CANDIDATE", help="models, checkpoints or adapter folders"
    )
    sel.add_argument("--out", help="write the ranking (and every answer) as JSON here")
    _ranking_args(sel, temperature=0.0)
    _precision_arg(sel)
    sel.set_defaults(func=cmd_select)

    bon = sub.add_parser("best-of-n", help="sample n answers per prompt, keep the best by reward")
    bon.add_argument("--rm", required=True, help="the reward model")
    bon.add_argument("model", help="the model that answers")
    bon.add_argument("-n", type=int, default=4, help="answers sampled per prompt (default 4)")
    bon.add_argument(
        "--out", help="folder for a rejection-sampling dataset: sft.jsonl, preference.jsonl, ranked.jsonl"
    )
    _ranking_args(bon, temperature=0.8)
    _precision_arg(bon)
    bon.set_defaults(func=cmd_best_of_n)

    data = sub.add_parser(
        "data",
        help="validate, inspect and prepare data: data check|stats PATH... --kind KIND; "
        "data clean|dedup|tokenize IN... --out DIR",
        description="check: every problem, then a summary; stats: summary only. Pre-training data, "
        "streamed: clean (Unicode repair, boilerplate, Gopher/C4 quality filters), dedup (exact + "
        "MinHash near-duplicates), tokenize (tokens.bin for `tunelab pretrain data.train=DIR`). "
        "clean and dedup take settings as key=value after the inputs (min_words=20 languages=[en], "
        "threshold=0.7): see tunelab/data/prep/config.py.",
    )
    data.add_argument("action", choices=["check", "stats", *PREP_ACTIONS], help="what to do")
    data.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="JSONL (.jsonl.gz too) / JSON / Parquet / CSV / text files or folders; key=value settings",
    )
    data.add_argument("--kind", help="check|stats: text | pairs | chat | preference | prompts | judgments")
    data.add_argument(
        "--model",
        default="smollm2-135m",
        help="tokenizer to count and render with, or to tokenize with ('none' = characters only)",
    )
    data.add_argument("--out", help="clean|dedup|tokenize: the output folder")
    data.add_argument(
        "--workers", type=int, help="clean|dedup|tokenize: processes (default: the CPUs, up to 8)"
    )
    data.add_argument("--gzip", action="store_true", help="clean|dedup: write .jsonl.gz shards")
    data.add_argument("--shard-mb", type=float, default=256, help="clean|dedup: MB of text per shard (256)")
    data.add_argument("--config", help="clean|dedup: a YAML file of settings (key=value after it wins)")
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

    _config_command(
        sub.add_parser(
            "ladder",
            help="run every method on one task and compare quality against cost: ladder TASK.yaml",
            add_help=False,
        ),
        "LadderConfig",
        cmd_ladder,
        metavar="TASK [key=value ...]",
        help="a task YAML (or a built-in task, or reasoning_gym:NAME), then overrides such as rungs=[zero_shot,lora] lora.steps=50",
    )
    _config_command(
        sub.add_parser(
            "quickstart",
            help="the ladder on the embedded SmolLM2-135M and the built-in extraction task (~15 min)",
            add_help=False,
        ),
        "LadderConfig",
        cmd_quickstart,
        name="overrides",
        metavar="key=value",
        help="ladder overrides, e.g. eval.limit=20",
    )

    plan = sub.add_parser(
        "plan", help="memory and time of a training run before it starts, and pre-training data needs"
    )
    plan.add_argument(
        "model",
        nargs="?",
        default="smollm2-135m",
        help="model reference, an HF folder or just its config.json (default smollm2-135m)",
    )
    plan.add_argument(
        "--method",
        nargs="+",
        choices=["full", "lora", "prompt"],
        help="methods to plan (default: full lora prompt on one machine, full lora on devices)",
    )
    plan.add_argument("--batch-size", type=int, default=8, help="rows per step (default 8)")
    plan.add_argument("--seq-len", type=int, default=256, help="tokens per row after padding (default 256)")
    plan.add_argument(
        "--steps", type=int, default=100, help="optimizer steps, for the total time (default 100)"
    )
    plan.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default 16)")
    plan.add_argument(
        "--prompt-tokens", type=int, default=20, help="virtual tokens of prompt tuning (default 20)"
    )
    plan.add_argument(
        "--data",
        nargs="+",
        metavar="PATH",
        help="token folders (tunelab data tokenize) or text files: which model size they train well",
    )
    add_cluster_arguments(plan)
    plan.set_defaults(func=cmd_plan)

    label = sub.add_parser("label", help="human preference labelling: label serve|stats|export PROJECT.yaml")
    label.add_argument(
        "action",
        choices=["serve", "stats", "export"],
        help="serve: the web page for assessors; stats: quality of assessors and items; export: preference JSONL",
    )
    label.add_argument("project", help="the project file (see examples/label/project.yaml)")
    label.add_argument("--host", help="serve: address to listen on (default: the project's server.host)")
    label.add_argument("--port", type=int, help="serve: TCP port (default: the project's server.port)")
    label.add_argument("--json", help="stats: also write every statistic as JSON here")
    label.add_argument("--worst", type=int, default=5, help="stats: list this many lowest-agreement items")
    label.add_argument("--out", help="export: the preference JSONL to write (for tunelab rm / dpo)")
    label.add_argument("--judgments", help="export: also write every usable vote as arena judgments here")
    label.set_defaults(func=cmd_label)

    arena = sub.add_parser(
        "arena", help="Bradley-Terry ratings of systems from pairwise judgments, with 95%% intervals"
    )
    arena.add_argument(
        "files", nargs="+", metavar="JUDGMENTS", help="JSONL of model_a, model_b, winner (FastChat battles)"
    )
    arena.add_argument("--out", default="runs/arena", help="folder for ratings.json and ratings.png")
    arena.add_argument("--rounds", type=int, default=1000, help="bootstrap resamples (default 1000)")
    arena.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    arena.add_argument(
        "--prior",
        type=float,
        default=1e-3,
        help="Gaussian prior on log-strengths; 0 = pure maximum likelihood",
    )
    arena.set_defaults(func=cmd_arena)

    add_export_parser(sub)

    doctor = sub.add_parser(
        "doctor", help="versions, the embedded model, free disk and memory, known-bad combinations"
    )
    doctor.add_argument(
        "--load", action="store_true", help="convert the embedded model first if needed (~30 s), then load it"
    )
    doctor.set_defaults(func=cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `data clean IN --out DIR min_words=20`: settings after the options are still settings
        if getattr(args, "command", None) == "data" and all(
            "=" in e and not e.startswith("-") for e in extra
        ):
            args.paths += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    _offline_defaults()
    from safetensors import SafetensorError

    from tunelab.errors import TunelabError

    try:
        if not hasattr(args, "compute_precision"):
            return args.func(args)
        from tunelab.models import precision  # generate, score, select, best-of-n: --precision

        with precision.using(precision.resolve(args.compute_precision)):
            return args.func(args)
    except TunelabError as err:
        print(f"tunelab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (OSError, SafetensorError) as err:  # a file read or written: a full disk, a read-only folder
        where = f" {err.filename}" if getattr(err, "filename", None) else ""
        print(
            f"tunelab {args.command}: error: could not read or write{where}: {getattr(err, 'strerror', None) or err}. "
            "Check that the path exists, is writable and that the disk has space.",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
