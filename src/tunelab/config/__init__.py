"""The config layer: typed sections for every command (`schema`) and their loader (`load`).

It imports no behaviour: stages, models and apps import it, never the other way round.
"""

from tunelab.config.load import (
    INT_MAX,
    SEED_MAX,
    Section,
    dump_config,
    load_config,
    parse_overrides,
    read_yaml_text,
)

__all__ = [
    "INT_MAX",
    "SEED_MAX",
    "Section",
    "dump_config",
    "load_config",
    "parse_overrides",
    "read_yaml_text",
]
