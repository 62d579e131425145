"""Property-based fuzzing of everything that reads a user's file (issue 21, item 7): the config loader
(YAML files and key=value overrides, every config class), the labelling project loader, and every data
reader (JSONL, JSON, CSV, text, gzip, Parquet) for every kind. Whatever comes in, only tunelab's own
error type comes out, each example within a deadline, and the message prints on any console.

In the suite each property runs a few dozen examples (a few seconds in all). A longer run by hand:

    TUNELAB_FUZZ_EXAMPLES=3000 python -m pytest -q tests/test_fuzz.py
"""

import gzip
import json
import os
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.config import load_config, parse_overrides
from tunelab.config.schema import (
    DPOConfig,
    EvalConfig,
    LadderConfig,
    PretrainConfig,
    RLConfig,
    RMConfig,
    SFTConfig,
)
from tunelab.data.read import KINDS, check_dataset
from tunelab.errors import TunelabError
from tunelab.label.project import load_project

EXAMPLES = int(os.environ.get("TUNELAB_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=5),  # bounded time: a hang or a blow-up fails the example
    database=None,  # no .hypothesis folder in the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CONFIGS = [SFTConfig, PretrainConfig, RMConfig, RLConfig, DPOConfig, EvalConfig, LadderConfig]

# the names readers and configs look for, so that generated input reaches past the first check
FIELDS = [
    "prompt", "completion", "messages", "conversations", "role", "content", "from", "value", "chosen",
    "rejected", "margin", "weight", "text", "answer", "reference", "model_a", "model_b", "winner", "judge",
    "instruction", "input", "output", "system",
]  # fmt: skip
KEYS = [
    "model", "adapter", "lora", "r", "alpha", "targets", "train", "lr", "max_steps", "epochs", "warmup",
    "max_grad_norm", "seed", "out", "resume", "data", "train", "eval", "pack", "guard", "spike", "rl",
    "group", "reward", "kl", "beta", "rollout", "temperature", "assessors", "admin_token", "pairs", "server",
    "host", "port", "overlap", "rungs", "strategy", "task", "name",
]  # fmt: skip
SPECIAL_FLOATS = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -0.0, 5e-324])
HUGE_INTS = st.sampled_from([2**63, -(2**63) - 1, 10**30, 10**400])
TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["[/INST]", "[link=x]y[/link]", "\ud800", "a\udfffb", "\x00", "\ufeff", "null", ""]),
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), HUGE_INTS, st.floats(), SPECIAL_FLOATS, TEXT
)


def values(keys: list[str]):
    """Nested JSON-like values whose mapping keys are mostly names tunelab reads."""
    key = st.one_of(st.sampled_from(keys), st.text(max_size=8))
    return st.recursive(
        SCALARS,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(key, inner, max_size=5)),
        max_leaves=25,
    )


def _plain(value):
    """JSON text of a value, with the non-standard NaN / Infinity JSON readers accept."""
    return json.dumps(value, ensure_ascii=False, allow_nan=True)


def _only_our_error(call):
    """Run `call`; a TunelabError is fine (and must print), anything else fails the example."""
    try:
        call()
    except TunelabError as err:
        text = str(err)
        text.encode("utf-8", "backslashreplace")  # prints on stderr, whatever it quotes
        assert "Traceback" not in text
        assert len(text) < 20_000, "a message quoting the whole input"


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


# ---------------------------------------------------------------- data readers


@st.composite
def data_files(draw):
    """(suffix, bytes): rows of generated values, raw bytes, or a valid row with bytes spliced in."""
    how = draw(st.sampled_from(["rows", "bytes", "splice", "deep"]))
    suffix = draw(st.sampled_from([".jsonl", ".json", ".csv", ".txt", ".jsonl.gz", ".parquet", ".unknown"]))
    if how == "rows":
        rows = draw(st.lists(values(FIELDS), min_size=1, max_size=6))
        if suffix == ".json":
            raw = _plain(rows).encode("utf-8", "surrogatepass")
        elif suffix == ".csv":
            header = draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4, unique=True))
            lines = [",".join(header)] + [
                ",".join(_plain(v)[:20] for v in row) for row in [[r] * len(header) for r in rows]
            ]
            raw = "\n".join(lines).encode("utf-8", "surrogatepass")
        else:
            raw = "\n".join(_plain(r) for r in rows).encode("utf-8", "surrogatepass")
    elif how == "bytes":
        raw = draw(st.binary(max_size=400))
    elif how == "splice":
        good = _plain({"prompt": "a question", "completion": "an answer", "chosen": "x", "rejected": "y"})
        at = draw(st.integers(0, len(good)))
        raw = (good[:at]).encode() + draw(st.binary(max_size=20)) + good[at:].encode()
    else:  # nesting and numbers beyond what parsers take by default
        depth = draw(st.sampled_from([63, 65, 999, 1001, 20_000]))
        raw = (
            '{"prompt": '
            + "[" * depth
            + "]" * depth
            + ', "n": '
            + "9" * draw(st.sampled_from([10, 4400]))
            + "}"
        ).encode()
    if suffix.endswith(".gz") and draw(st.booleans()):
        raw = gzip.compress(raw)
    return suffix, raw


def _other_readers():
    """The readers besides check_dataset: label pairs and honeypots, task rows, task files."""
    from tunelab.label.pairs import read_honeypots, read_pairs
    from tunelab.tasks.task import load_task, task_rows

    return {
        "pairs": read_pairs,
        "honeypots": read_honeypots,
        "task rows": lambda path: task_rows(path, "{prompt} {input}", "answer"),
        "task file": lambda path: load_task(str(path)),
    }


@FUZZ
@given(case=data_files(), kind=st.sampled_from(sorted(KINDS) + ["pairs", "honeypots", "task rows"]))
def test_any_data_file_gives_rows_or_our_error(folder, case, kind):
    suffix, raw = case
    path = folder / f"data{suffix}"
    path.write_bytes(raw)
    readers = _other_readers()
    _only_our_error(lambda: readers[kind](path) if kind in readers else check_dataset(path, kind))


# ---------------------------------------------------------------- configs


@st.composite
def yaml_texts(draw):
    how = draw(st.sampled_from(["tree", "text", "aliases"]))
    if how == "tree":
        tree = draw(st.dictionaries(st.sampled_from(KEYS), values(KEYS), max_size=6))
        return _plain(tree)  # JSON is YAML
    if how == "text":
        return draw(st.text(max_size=300))
    n = draw(st.integers(2, 12))
    width = draw(st.integers(2, 12))
    lines = ['a0: &a0 ["x"]'] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, n)]
    return "\n".join(lines) + "\n"


@FUZZ
@given(text=yaml_texts(), cls=st.sampled_from([*CONFIGS, "task file"]))
def test_any_config_file_gives_a_config_or_our_error(folder, text, cls):
    path = folder / "config.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    read = _other_readers()["task file"] if cls == "task file" else lambda p: load_config(cls, p)
    _only_our_error(lambda: read(path))


@FUZZ
@given(
    overrides=st.lists(
        st.tuples(
            st.lists(st.sampled_from(KEYS), min_size=1, max_size=3).map(".".join) | st.text(max_size=10),
            st.one_of(
                SCALARS.map(lambda v: _plain(v) if not isinstance(v, str) else v), st.text(max_size=40)
            ),
        ).map(lambda kv: f"{kv[0]}={kv[1]}")
        | st.text(max_size=20),
        max_size=5,
    ),
    cls=st.sampled_from(CONFIGS),
)
def test_any_command_line_override_gives_a_config_or_our_error(overrides, cls):
    _only_our_error(lambda: parse_overrides(overrides))
    _only_our_error(lambda: load_config(cls, None, overrides))


@FUZZ
@given(text=yaml_texts(), extra=st.dictionaries(st.sampled_from(KEYS), values(KEYS), max_size=4))
def test_any_project_file_gives_a_project_or_our_error(folder, text, extra):
    path = folder / "project.yaml"
    base = {"pairs": "pairs.jsonl", "assessors": {"ann": "ann-token-0123456789"}, "admin_token": "a" * 20}
    if text.startswith("{"):
        path.write_text(_plain({**base, **extra}), encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _only_our_error(lambda: load_project(path))
