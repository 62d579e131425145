"""tunelab: the LLM-tuning playbook as one system.

    import tunelab
    run = tunelab.sft(model="smollm2-135m", adapter="lora", data={"train": rows})

The commands live in tunelab.api and are imported on first use, so `import tunelab` stays light
(no torch). Five share a name with a module (`tunelab.rm`, `.rl`, `.eval`, `.ladder`, `.export`):
there the name is a `_Command`, which runs the stage when called and otherwise
stands for the module (`tunelab.rm.RewardScorer` still works, monkeypatching included).
"""

import importlib
import sys
import types

__version__ = "0.1.0"

_LAZY = {"sft", "pretrain", "dpo", "Run"}
_SHADOWED = ("rm", "rl", "eval", "ladder", "export")


class _Command:
    """A stage function that also stands for the subpackage of the same name."""

    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)

    def __call__(self, *args, **keys):
        return getattr(importlib.import_module("tunelab.api"), self._name)(*args, **keys)

    def _module(self):
        return importlib.import_module(f"tunelab.{self._name}")

    def __getattr__(self, attr):
        return getattr(self._module(), attr)

    def __setattr__(self, attr, value):
        setattr(self._module(), attr, value)

    def __delattr__(self, attr):
        delattr(self._module(), attr)

    def __repr__(self) -> str:
        return (
            f"<tunelab.{self._name}: the `tunelab {self._name}` command, and the module tunelab.{self._name}>"
        )


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return  # importing the subpackage must not replace the command; sys.modules still has it
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
rm, rl, eval, ladder, export = (_Command(name) for name in _SHADOWED)


def __getattr__(name: str):
    if name == "TunelabError":
        from tunelab.errors import TunelabError

        return TunelabError
    if name in _LAZY:
        return getattr(importlib.import_module("tunelab.api"), name)
    raise AttributeError(f"module 'tunelab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, "TunelabError"])
