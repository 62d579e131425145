"""A variant's name checked against its table, which the behaviour module owns.

    algo = pick(ALGOS, cfg.algo, "algo")      # the record, or an error that lists the table's names

The config layer imports no behaviour, so a config field holding a variant (adapter, algo, dpo.loss,
kl.estimator, strategy) is a plain string; the stage that uses it checks it against the table before
any model loads (docs/decisions.md, "variant names"). The table is the one list of names.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TypeVar

from tunelab.errors import TunelabError

T = TypeVar("T")


def pick(table: Mapping[str, T], name: str, key: str) -> T:
    """`table[name]`, or a TunelabError naming `key`, the valid names and the closest one."""
    if name in table:
        return table[name]
    close = difflib.get_close_matches(str(name), list(table), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise TunelabError(f"{key}={name!r} is not one of: {', '.join(table)}.{hint}")
