"""`tunelab export RUN_OR_MODEL --to merged|gguf [--quant f16|q8_0] --out PATH` (see tunelab.export)."""

from __future__ import annotations

import argparse
import sys

from tunelab.commands import quiet_hf


def add_export_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="a self-contained HF folder (--to merged) or a llama.cpp GGUF + Ollama Modelfile (--to gguf)",
        description="Export a run (its final/), an adapter or a model. LoRA/DoRA adapters are merged. "
        "A reward model exports only --to merged (GGUF has no scalar head), or --base for its base model.",
    )
    p.add_argument(
        "model", metavar="RUN_OR_MODEL", help="a run folder, adapter folder, HF folder, .gguf or name"
    )
    p.add_argument(
        "--to", required=True, choices=["merged", "gguf"], help="merged: HF folder; gguf: llama.cpp"
    )
    p.add_argument(
        "--quant", default="f16", choices=["f16", "q8_0", "f32"], help="GGUF weights (default f16)"
    )
    p.add_argument(
        "--out", required=True, help="merged: a folder; gguf: a .gguf file or a folder (model.gguf)"
    )
    p.add_argument("--base", action="store_true", help="export the model a reward model was trained from")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from tunelab.export import main

    quiet_hf()
    path = main(args.model, args.to, args.out, quant=args.quant, base=args.base)
    if args.to == "gguf":
        print(
            f"wrote {path} and {path.parent / 'Modelfile'} (ollama create NAME -f Modelfile)", file=sys.stderr
        )
    else:
        print(f"wrote {path}", file=sys.stderr)
    return 0
