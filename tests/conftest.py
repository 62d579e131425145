"""Shared fixtures: tiny models (built once per session), data files written on the fly, the CLI in-process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Tiny models on one thread, here and in every process a test starts: their matrices are too small to
# share, and with two threads OpenMP spin-waits. With one other busy process on this 2-core machine,
# a GRPO test plus tests/test_train.py took 270 s on two threads and 29 s on one (measured).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# `train.precision=auto` means fp32 in the suite on every machine (an AMX CPU would pick bf16): pinned
# losses must not depend on the machine; tests/test_precision.py forces the measurement instead
os.environ.setdefault("TUNELAB_AUTO_PRECISION", "fp32")


@pytest.fixture(autouse=True)
def _threads(request):
    """The real model (tests marked slow) gets the machine's cores back; everything else runs on one."""
    if request.node.get_closest_marker("slow") is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(min(os.cpu_count() or 1, 4))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_llama():
    from tunelab.models.load import load_model

    return load_model("tiny:llama")


@pytest.fixture(scope="session")
def tiny_gpt2():
    from tunelab.models.load import load_model

    return load_model("tiny:gpt2")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


@pytest.fixture
def cli(capsys):
    """Run `tunelab ARGS...` in-process; returns (exit status, stdout, stderr)."""
    from tunelab.cli import main

    def run(*argv: str):
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def one_thread():
    """Tiny models on one thread: with two, OpenMP threads spin-wait for each other, and on a busy
    2-core machine a step took 10-30x longer (measured: 8 tiny steps 0.5 s on one thread, 5-35 s on two)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def zygote():
    """Forks `tunelab` runs as real processes that start at once, on one thread (helpers/zygote.py)."""
    from helpers.zygote import Zygote

    warm = Zygote()
    yield warm
    warm.close()
