"""Numbers that make sense: every numeric setting of every config class is finite, bounded on both
sides, and refuses what is out of range with a message naming the key (issue 21, item 2)."""

import math
import types
import typing

import annotated_types as at
import pytest
from pydantic import ValidationError

import tunelab.config.schema
import tunelab.data.prep.config
import tunelab.label.project
import tunelab.prompting.strategies
import tunelab.tasks.task  # noqa: F401  (imported for their config classes)
from tunelab.config import SEED_MAX, Section, load_config
from tunelab.config.schema import RLConfig, SFTConfig
from tunelab.errors import TunelabError


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _number_type(annotation):
    """int or float for `int`, `float`, `int | None`, `float | None`; None for anything else."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    args = typing.get_args(annotation) if union else (annotation,)
    numbers = [a for a in args if a in (int, float)]
    return numbers[0] if numbers and all(a in (int, float, type(None)) for a in args) else None


NUMERIC_FIELDS = sorted(
    (cls.__module__, cls.__name__, name, kind, field)
    for cls in set(_subclasses(Section))
    for name, field in cls.model_fields.items()
    if (kind := _number_type(field.annotation))
)
CLASSES = {(c.__module__, c.__name__): c for c in _subclasses(Section)}


def _bounds(field):
    low = [m for m in field.metadata if isinstance(m, (at.Ge, at.Gt))]
    high = [m for m in field.metadata if isinstance(m, (at.Le, at.Lt))]
    return low, high


def test_the_walk_sees_every_config_class():
    names = {name for _, name, *_ in NUMERIC_FIELDS}
    assert {"TrainSection", "LoraSection", "RLSection", "ProjectConfig", "DedupConfig"} <= names
    assert len(NUMERIC_FIELDS) > 100


@pytest.mark.parametrize(
    "module, cls_name, name, kind, field",
    NUMERIC_FIELDS,
    ids=[f"{c}.{n}" for _, c, n, *_ in NUMERIC_FIELDS],
)
def test_every_numeric_field_is_bounded_and_refuses_what_is_out_of_range(module, cls_name, name, kind, field):
    """A new numeric field without a range fails here; so does one that lets inf, NaN or a 10**30 in."""
    low, high = _bounds(field)
    assert low and high, f"{cls_name}.{name} needs both a lower and an upper bound (ge/gt and le/lt)"
    if name == "seed":
        assert low[0] == at.Ge(0) and high[0] == at.Le(SEED_MAX), "seeds are what every RNG takes"
    section = CLASSES[(module, cls_name)].model_construct()
    lowest = low[0].ge if isinstance(low[0], at.Ge) else low[0].gt
    highest = high[0].le if isinstance(high[0], at.Le) else high[0].lt
    bad = [math.inf, -math.inf, math.nan, "1e999", ".inf", 10**30, 10**5000, highest * 2 + 1, lowest - 1]
    if isinstance(low[0], at.Gt):
        bad.append(lowest)
    for value in bad:
        with pytest.raises(ValidationError):
            setattr(section, name, value)


@pytest.mark.parametrize(
    "override, says",
    [
        ("train.lr=1e999", "'train.lr': input should be a finite number"),
        ("train.lr=.inf", "'train.lr': input should be a finite number"),
        ("train.lr=nan", "'train.lr': input should be a finite number"),
        ("train.lr=0", "'train.lr': input should be greater than 0"),
        ("train.max_grad_norm=-1", "'train.max_grad_norm': input should be greater than 0"),
        ("train.max_grad_norm=0", "'train.max_grad_norm': input should be greater than 0"),
        ("seed=-1", "'seed': input should be greater than or equal to 0"),
        ("seed=4294967296", "'seed': input should be less than or equal to 4294967295"),
        ("seed=" + "9" * 5000, "a number with thousands of digits"),
        ("train.epochs=1e9", "'train.epochs': input should be less than or equal to 10000"),
        ("train.warmup=1e12", "'train.warmup': input should be less than or equal to 1000000"),
        ("rollout.extra_eos_ids=[99999999999999999999999]", "'rollout.extra_eos_ids': a number out of range"),
        ("kl.beta=-0.1", "'kl.beta': input should be greater than or equal to 0"),
    ],
)
def test_a_number_out_of_range_on_the_command_line_names_the_key(override, says):
    with pytest.raises(TunelabError) as err:
        load_config(RLConfig, None, [override])
    assert says in str(err.value)
    assert len(str(err.value)) < 400


def test_a_warm_up_longer_than_the_run_is_refused():
    with pytest.raises(TunelabError, match="warm-up of 50 steps is longer than train.max_steps=10"):
        load_config(SFTConfig, None, ["train.warmup=50", "train.max_steps=10"])
    assert load_config(SFTConfig, None, ["train.warmup=0.5", "train.max_steps=10"]).train.warmup == 0.5


def test_null_switches_clipping_off():
    assert load_config(SFTConfig, None, ["train.max_grad_norm=null"]).train.max_grad_norm is None


@pytest.mark.parametrize(
    "text, says",
    [
        # 9 levels of 9 aliases: 9**9 = 387 million strings once expanded; PyYAML would build them lazily,
        # but every walk over the result (the old duplicate-key check, pydantic, repr) hung
        (
            'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
            + "".join(f"{n}: &{n} [{','.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")),
            "its aliases expand to over 100,000 values",
        ),
        ("a: &a [*a]\n", "an alias refers to a value that holds it"),
        ("train: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than 50 levels"),
        ("train:\n  lr: 1\n  lr: 2\n", "'train.lr' appears twice (line 2 and line 3); say it once"),
        ("seed: " + "7" * 5000 + "\n", "a number with thousands of digits"),
        ("x: " + "y" * 1_100_000 + "\n", "over 1,000,000 characters"),
    ],
    ids=["alias-bomb", "alias-cycle", "deep", "key-twice", "huge-int", "huge-file"],
)
def test_yaml_is_bounded_in_size_depth_and_expansion(tmp_path, text, says):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TunelabError) as err:
        load_config(SFTConfig, path)
    assert says in str(err.value) and str(path) in str(err.value)


def test_an_alias_bomb_in_an_override_is_refused_too():
    levels = ["&l0 [" + ",".join(["1"] * 10) + "]"]
    levels += [f"&l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 7)]
    bomb = "[" + ",".join(levels) + "]"  # 10**7 values once expanded, in 200 characters
    assert load_config(SFTConfig, None, ["lora.targets=[q, v]"]).lora.targets == ["q", "v"]
    with pytest.raises(TunelabError, match="Override 'lora.targets': .* expand to over 100,000 values"):
        load_config(SFTConfig, None, [f"lora.targets={bomb}"])


def test_an_unknown_key_of_any_spelling_is_named():
    # found by tests/test_fuzz.py: a key with "[" in it was taken for a union tag and the message crashed
    with pytest.raises(TunelabError, match=r"unknown key '\['"):
        load_config(SFTConfig, None, ["[=null"])
