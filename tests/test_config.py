import pytest

from tunelab.config import dump_config, load_config, parse_overrides
from tunelab.config.schema import SFTConfig
from tunelab.errors import TunelabError


def test_overrides_parse_types():
    tree = parse_overrides(
        [
            "train.lr=1e-5",
            "train.batch_size=4",
            "data.pack=true",
            "lora.targets=[q_proj, v_proj]",
            "model=tiny:llama",
        ]
    )
    assert tree == {
        "train": {"lr": "1e-5", "batch_size": 4},  # YAML 1.1 keeps 1e-5 a string; pydantic makes it a float
        "data": {"pack": True},
        "lora": {"targets": ["q_proj", "v_proj"]},
        "model": "tiny:llama",
    }


def test_yaml_then_overrides_then_defaults(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("model: tiny:llama\nadapter: lora\ntrain:\n  lr: 1.0e-3\n  batch_size: 2\n")
    cfg = load_config(SFTConfig, path, ["train.lr=1e-5", "lora.r=4"])
    assert cfg.model.name == "tiny:llama" and cfg.adapter == "lora"
    assert cfg.train.lr == pytest.approx(1e-5)  # the override wins over the file
    assert cfg.train.batch_size == 2  # the file wins over the default
    assert cfg.lora.r == 4 and cfg.lora.alpha == 32  # untouched keys keep defaults
    dumped = dump_config(cfg)
    assert "grad_accum: 1" in dumped and "max_len: 1024" in dumped  # resolved: defaults written out


def test_unknown_key_names_it_and_suggests_the_closest(tmp_path):
    with pytest.raises(TunelabError) as err:
        load_config(SFTConfig, None, ["train.lrr=1e-5"])
    assert "unknown key 'train.lrr'" in str(err.value)
    assert "Did you mean 'train.lr'?" in str(err.value)
    with pytest.raises(TunelabError, match="Did you mean 'adapter'"):
        load_config(SFTConfig, None, ["adaptor=lora"])


def test_wrong_type_and_bad_choice_name_the_key():
    with pytest.raises(TunelabError, match=r"'train.batch_size'.*'eight'"):
        load_config(SFTConfig, None, ["train.batch_size=eight"])


def test_a_variant_name_is_checked_against_its_table_before_the_model_loads():
    from tunelab.config.variants import pick
    from tunelab.rl.algos import ALGOS
    from tunelab.stages.common import prepare_model

    cfg = load_config(SFTConfig, None, ["adapter=qlora"])  # the config layer holds a plain name
    with pytest.raises(
        TunelabError, match=r"adapter='qlora' is not one of: none, lora, .*Did you mean 'lora'"
    ):
        prepare_model(cfg)
    assert pick(ALGOS, "ppo", "algo").critic and not pick(ALGOS, "grpo", "algo").critic
    with pytest.raises(TunelabError, match=r"algo='grpp' is not one of: grpo, rloo, reinforce, ppo"):
        pick(ALGOS, "grpp", "algo")


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(TunelabError, match="does not exist"):
        load_config(SFTConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(TunelabError, match="not valid YAML"):
        load_config(SFTConfig, bad)


def test_every_field_has_help_text():
    from pydantic import BaseModel

    def walk(model: type[BaseModel]):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no help text"
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                walk(field.annotation)

    walk(SFTConfig)


def test_model_name_shorthand_merges_with_model_keys(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("model: tiny:llama\n")
    cfg = load_config(SFTConfig, path, ["model.dropout=0.1"])
    assert (cfg.model.name, cfg.model.dropout) == ("tiny:llama", 0.1)
    assert load_config(SFTConfig, None, ["model=tiny:gpt2"]).model.name == "tiny:gpt2"
