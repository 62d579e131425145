"""The Python API: every stage with Python data (a list of dicts, a Dataset), a reward callable and a
Task object, the CLI's validation and message, and `import tunelab` without torch."""

import json
import subprocess
import sys

import pytest

import tunelab
from tunelab.tasks.task import Task

PAIRS = [
    {"prompt": p, "completion": c} for p, c in [("cat", "chat"), ("dog", "chien"), ("bread", "pain")] * 2
]
PREFS = [
    {"prompt": "2+2=", "chosen": "4", "rejected": "five"},
    {"prompt": "capital of France", "chosen": "Paris", "rejected": "a city"},
] * 2
TINY = {"model": "tiny:llama", "train": {"max_steps": 2, "batch_size": 2, "warmup": 0}}


def test_import_tunelab_imports_no_torch():
    code = "import sys, tunelab; tunelab.sft; tunelab.TunelabError; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_sft_from_a_list_of_dicts_returns_a_run(tmp_path):
    run = tunelab.sft(
        **TINY, adapter="lora", data={"train": PAIRS}, out=str(tmp_path / "sft"), **{"lora.r": 4}
    )
    assert run.folder == tmp_path / "sft" and run.final == run.folder / "final"
    assert run.config["lora"]["r"] == 4 and run.config["train"]["max_steps"] == 2
    assert [m["step"] for m in run.metrics] == [1, 2] and all("loss" in m for m in run.metrics)
    written = run.folder / "data" / "data_train.jsonl"
    assert run.config["data"]["train"] == str(written) and len(written.read_text().splitlines()) == 6
    model, tok = run.load()
    assert hasattr(model, "peft_config") and tok.eos_token == "<|im_end|>"
    answer = run.generate("cat", max_new_tokens=4)
    assert isinstance(answer, str) and run.generate(["cat", "dog"], max_new_tokens=4)[0] == answer


def test_pretrain_rm_and_dpo_take_a_dataset(tmp_path):
    from datasets import Dataset

    texts = Dataset.from_list([{"text": "The quick brown fox jumps over the lazy dog. " * 4}] * 8)
    run = tunelab.pretrain(**TINY, data={"train": texts}, out=str(tmp_path / "pt"), **{"train.max_len": 32})
    assert run.final.is_dir() and len(run.metrics) == 2
    rm_run = tunelab.rm(
        **TINY, adapter="lora", data={"train": Dataset.from_list(PREFS)}, out=str(tmp_path / "rm")
    )
    assert (rm_run.final / "adapter_config.json").is_file() and rm_run.metrics
    dpo = tunelab.dpo(
        **TINY, adapter="lora", **{"data.train": Dataset.from_list(PREFS)}, out=str(tmp_path / "dpo")
    )
    assert dpo.metrics and dpo.final.is_dir()
    with pytest.raises(tunelab.TunelabError, match="scores answers"):
        rm_run.generate("hi")


def test_rl_takes_a_python_reward_and_a_weighted_list(tmp_path):
    seen = []

    def short(example: dict, completion: str) -> float:
        seen.append((example["prompt"], completion))
        return -len(completion) / 10

    prompts = [{"prompt": p} for p in ["Say something", "Count", "What now", "More"]]
    keys = dict(TINY, rl={"group": 2, "prompts_per_step": 2}, rollout={"max_new_tokens": 4})
    run = tunelab.rl(**keys, data={"train": prompts}, reward=short, out=str(tmp_path / "rl"))
    assert seen and {p for p, _ in seen} <= {p["prompt"] for p in prompts}
    assert run.config["reward"].startswith("tunelab.api:") and "reward" in run.metrics[0]
    mixed = tunelab.rl(
        **keys,
        data={"train": prompts},
        reward=[short, {"name": "length", "weight": 0.5}],
        out=str(tmp_path / "rl2"),
    )
    assert [r["name"] if isinstance(r, dict) else r for r in mixed.config["reward"]][1] == "length"


def test_eval_and_ladder_take_a_task_object(tmp_path):
    rows = [{"prompt": f"what is {i}+{i}", "answer": str(2 * i)} for i in range(6)]
    calls = []

    def is_even(prediction: str, row: dict) -> float:
        calls.append(prediction)
        return float(prediction.strip().isdigit() and int(prediction) % 2 == 0)

    task = Task(
        name="sums",
        train=rows[:3],
        eval=rows[3:],
        extract="number",
        metrics=["even"],
        scorers={"even": is_even},
    )
    run = tunelab.eval(
        model="tiny:llama", task=task, strategy=["zero_shot"], out=str(tmp_path / "eval"), **{"eval.limit": 3}
    )
    assert run.final is None and len(calls) == 3
    assert run.metrics[0]["strategy"] == "zero_shot" and run.results["task"] == "sums"
    ladder = tunelab.ladder(
        task,
        model="tiny:llama",
        rungs=["zero_shot"],
        eval={"limit": 2, "train_limit": 0},
        retention={"task": None},
        out=str(tmp_path / "ladder"),
    )
    assert [r["name"] for r in ladder.metrics] == ["zero_shot"] and ladder.metrics[0]["status"] == "ok"


def test_a_bad_key_raises_the_clis_message_and_never_exits(tmp_path, cli):
    with pytest.raises(tunelab.TunelabError) as caught:
        tunelab.sft(model="tiny:llama", train={"lrr": 1e-3}, out=str(tmp_path / "x"))
    code, _, err = cli("sft", "model=tiny:llama", "train.lrr=1e-3", f"out={tmp_path / 'x'}")
    assert code == 2 and err.strip() == f"tunelab sft: error: {caught.value}"
    assert "unknown key 'train.lrr'. Did you mean 'train.lr'?" in str(caught.value)
    with pytest.raises(tunelab.TunelabError, match="adapter='lorra' is not one of"):
        tunelab.sft(model="tiny:llama", adapter="lorra", out=str(tmp_path / "x"))
    with pytest.raises(tunelab.TunelabError, match="lr"):
        tunelab.sft(**{"model": "tiny:llama", "train.lr": -1.0}, out=str(tmp_path / "x"))


def test_dotted_and_nested_keys_mean_the_same(tmp_path):
    from tunelab.api import _config

    a = _config("sft", None, {"train": {"lr": 1e-5, "max_steps": 3}, "lora.r": 4, "out": str(tmp_path)})
    b = _config("sft", None, {"train.lr": 1e-5, "train.max_steps": 3, "lora": {"r": 4}, "out": str(tmp_path)})
    assert a == b and a.train.lr == 1e-5
    c = _config("sft", {"model": "tiny:llama", "model.dtype": "bfloat16"}, {"out": str(tmp_path)})
    assert c.model.name == "tiny:llama" and c.model.dtype == "bfloat16"


def test_rm_eval_and_ladder_are_still_their_modules_too():
    import tunelab.rm
    from tunelab.rm import RewardScorer

    assert tunelab.rm.RewardScorer is RewardScorer and callable(tunelab.rm)
    assert json.loads(json.dumps({"ok": True}))  # nothing above replaced the command by the module
    assert repr(tunelab.eval).startswith("<tunelab.eval")


def test_a_config_file_then_keys_as_on_the_command_line(tmp_path):
    from pathlib import Path

    from tunelab.api import _config

    yaml_file = Path(__file__).parents[1] / "configs" / "sft.yaml"
    cfg = _config("sft", yaml_file, {"train.lr": 3e-4, "out": str(tmp_path)})
    assert cfg.adapter == "lora" and cfg.train.lr == 3e-4 and cfg.model.name == "smollm2-135m"
