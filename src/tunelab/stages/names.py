"""Every variant name of a stage's config checked against its table at once, before any data is read
or a model loads: `adapter=lorra` is reported as that, not as a missing data file found first.

    check_names(cfg)      # the command line and the Python API call it right after the config is read

The config layer holds variant names as plain strings (it imports no behaviour); each table lives
with the behaviour it names, and this is where a config meets them.
"""

from __future__ import annotations

from tunelab.config.variants import pick


def _tables() -> dict[str, dict]:
    from tunelab.losses.policy import KL_ESTIMATORS
    from tunelab.losses.preference import DPO_LOSSES
    from tunelab.models.adapters import ADAPTERS
    from tunelab.prompting.strategies import STRATEGIES
    from tunelab.rl.algos import ALGOS

    return {
        "adapter": ADAPTERS,
        "algo": ALGOS,
        "kl.estimator": KL_ESTIMATORS,
        "dpo.loss": DPO_LOSSES,
        "strategy": STRATEGIES,
    }


def check_names(cfg) -> None:
    """A TunelabError for the first variant name in `cfg` that its table does not hold."""
    for key, table in _tables().items():
        value = cfg
        for part in key.split("."):
            value = getattr(value, part, None)
        for name in value if isinstance(value, list) else [value]:
            if name is not None:
                pick(table, name, key)
