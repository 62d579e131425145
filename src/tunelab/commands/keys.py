"""The config keys of a command, read off its config class, for `tunelab <stage> --help`.

    tunelab sft --help      # ... then every key: `train.lr  2e-4  peak learning rate`, grouped by section

The listing is made from the pydantic fields themselves (name, default, description), so it cannot
drift from what the command accepts. It is built only when --help is asked for: `tunelab sft ...`
itself never pays for it.
"""

from __future__ import annotations

import argparse
import importlib
import textwrap
from typing import Any

from pydantic import BaseModel


def _section_class(annotation: Any) -> type[BaseModel] | None:
    """The config section a field holds, if it holds one (not a union of plain values)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _default_text(field, value: Any) -> str:
    if field.is_required():
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(v) for v in value) + "]"
    if isinstance(value, str):
        return repr(value) if (not value or value != value.strip() or "\n" in value) else value
    return str(value)


def key_rows(cls: type[BaseModel], instance: BaseModel | None = None, prefix: str = "") -> list[tuple]:
    """(section, key, default, description) for every leaf key of `cls`, in declaration order.

    Defaults are read from an instance, so a stage's own defaults show (RL's constant schedule,
    the ladder's per-rung learning rates) rather than the shared section's.
    """
    if instance is None:
        try:
            instance = cls()
        except Exception:  # a config with required fields has no complete defaults
            instance = None
    rows: list[tuple] = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        value = getattr(instance, name, None) if instance is not None else field.get_default()
        section = _section_class(field.annotation)
        if section is not None and not (isinstance(value, str)):
            rows.extend(key_rows(section, value if isinstance(value, BaseModel) else None, f"{key}."))
            continue
        rows.append(
            (prefix.rstrip(".") or "(top level)", key, _default_text(field, value), field.description or "")
        )
    return rows


def keys_epilog(cls: type[BaseModel], width: int = 100) -> str:
    """The key listing as help text: one block per section, `key  default  description`."""
    rows = key_rows(cls)
    order = {sec: i for i, sec in enumerate(dict.fromkeys(r[0] for r in rows))}
    order["(top level)"] = -1  # the plain keys first, then one block per section
    rows.sort(key=lambda r: order[r[0]])
    key_width = min(max(len(r[1]) for r in rows), 34)
    default_width = min(max(len(r[2]) for r in rows), 16)
    lines = ["config keys (set in CONFIG.yaml or as key=value; default, then what it does):"]
    section = None
    for sec, key, default, description in rows:
        if sec != section:
            lines.append("")
            lines.append(f"  {sec}:")
            section = sec
        head = f"    {key:<{key_width}}  {default:<{default_width}}  "
        body = textwrap.wrap(description, max(30, width - len(head))) or [""]
        lines.append(head + body[0])
        lines.extend(" " * len(head) + more for more in body[1:])
    return "\n".join(lines)


class KeysHelp(argparse.Action):
    """`-h/--help` that appends the command's config keys before printing (built only when asked)."""

    def __init__(
        self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None, config=None
    ):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)
        self.config = config  # (module, class name): imported only when help is shown

    def __call__(self, parser, namespace, values, option_string=None):
        module, name = self.config
        cls = getattr(importlib.import_module(module), name)
        parser.epilog = ((parser.epilog or "") + "\n\n" + keys_epilog(cls)).strip()
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.print_help()
        parser.exit()


def add_keys_help(parser: argparse.ArgumentParser, module: str, name: str) -> None:
    parser.add_argument(
        "-h", "--help", action=KeysHelp, config=(module, name), help="show this help and every config key"
    )
