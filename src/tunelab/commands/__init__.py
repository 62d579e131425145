"""Handlers of the `tunelab` commands that are more than a call into one module; the parser is in
tunelab.cli. Heavy libraries are imported inside each handler, so `tunelab --help` answers at once."""

from __future__ import annotations


def quiet_hf() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG.yaml] [key=value ...]`: the config file is the first item without '='."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items
