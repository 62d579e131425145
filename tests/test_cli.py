"""The command line end to end: help, generate, data check, and one-paragraph errors (no traceback)."""

import json
import subprocess
import sys

import pytest
from conftest import write_jsonl


def test_help_lists_the_commands():
    out = subprocess.run(
        [sys.executable, "-m", "tunelab", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("generate", "data", "doctor"):
        assert command in out.stdout


def test_generate_prints_a_completion(cli):
    code, out, err = cli("generate", "tiny:llama", "What is the capital of France?", "--max-new-tokens", "5")
    assert code == 0 and out.endswith("\n")  # a random tiny model: any text, but deterministic under greedy
    assert cli("generate", "tiny:llama", "What is the capital of France?", "--max-new-tokens", "5")[1] == out


def test_generate_with_an_adapter(cli, tmp_path):
    from peft import LoraConfig, get_peft_model

    from tunelab.models.load import load_model

    base, _ = load_model("tiny:llama")
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "a")
    code, out, _ = cli(
        "generate", "tiny:llama", "hi", "--adapter", str(tmp_path / "a"), "--max-new-tokens", "3"
    )
    assert code == 0  # LoRA B starts at zero: the same answer as the base model
    assert out == cli("generate", "tiny:llama", "hi", "--max-new-tokens", "3")[1]


def test_data_check_good_file_shows_summary_and_marked_example(cli, tmp_path):
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"prompt": "cat", "completion": "chat"}, {"prompt": "dog", "completion": "chien"}],
    )
    code, out, _ = cli("data", "check", str(path), "--kind", "pairs", "--model", "tiny:llama")
    assert code == 0
    assert "rows ok" in out and "trained tokens" in out and "length histogram" in out
    assert "[[chat<|im_end|>]]" in out


def test_data_check_lists_every_problem(cli, tmp_path):
    path = write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": "a", "completion": "b"}, "oops", {"prompt": "a"}]
    )
    code, out, _ = cli("data", "check", str(path), "--kind", "pairs", "--model", "none")
    assert code == 1
    assert f"{path}:2: is not valid JSON" in out and f"{path}:3: field 'completion'" in out


def test_data_stats_counts_overlong_rows(cli, tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "fox " * 50}, {"text": "fox"}])
    code, out, _ = cli(
        "data",
        "stats",
        str(path),
        "--kind",
        "text",
        "--model",
        "tiny:llama",
        "--max-len",
        "20",
        "--overlong",
        "drop",
    )
    assert code == 0 and "1 (drop: 1 dropped, 0 truncated)" in out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["data", "check", "{tmp}/nope.jsonl", "--kind", "pairs"], "does not exist"),
        (["data", "check", "{tmp}/x.jsonl", "--kind", "pair"], "Unknown data kind"),
        (["generate", "/no/such/model", "hi"], "does not exist"),
        (["generate", "tiny:llama", "hi", "--adapter", "{tmp}"], "not a PEFT adapter"),
    ],
)
def test_user_errors_are_one_paragraph_without_traceback(tmp_path, argv, expected):
    argv = [a.format(tmp=tmp_path) for a in argv]
    out = subprocess.run([sys.executable, "-m", "tunelab", *argv], capture_output=True, text=True)
    assert out.returncode == 2
    assert expected in out.stderr and "Traceback" not in out.stderr + out.stdout


def test_bad_data_through_the_cli(cli, tmp_path):
    (tmp_path / "e.jsonl").write_bytes(b"")
    code, _, err = cli("data", "check", str(tmp_path / "e.jsonl"), "--kind", "text", "--model", "none")
    assert code == 2 and "is empty" in err


def test_sft_through_the_cli_leaves_the_run_folder_of_the_contract(tmp_path):
    import pathlib

    from test_train import PAIRS

    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    run = tmp_path / "run"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunelab",
            "sft",
            "configs/sft.yaml",
            "model=tiny:llama",
            f"data.train={data}",
            "train.max_steps=3",
            "train.save_every=2",
            f"out={run}",
            "data.eval_split=0.25",
            "train.eval_every=2",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "report.md",
        "plots/loss.png",
        "final/adapter_config.json",
        "checkpoints/step-3/state.json",
    ):
        assert (run / name).is_file(), name
    assert list(run.glob("events.*"))
    meta = json.loads((run / "final" / "tunelab.json").read_text())  # generate/score render as training did
    assert meta["model"] == "tiny:llama" and meta["render"]["separator"] == "\n### Answer:\n"
    config = (run / "config.yaml").read_text()
    assert (
        "total_steps: 3" in config and "lr: 0.0002" in config
    )  # resolved: the file's values, defaults, derived
    report = (run / "report.md").read_text()
    assert "trainable parameters:" in report and "peak memory" in report and "target tokens/s" in report
    contract = pathlib.Path(__file__).resolve().parents[2] / "shared" / "checks" / "contract.py"
    if contract.is_file():
        check = subprocess.run(
            [sys.executable, str(contract), "--run", str(run)], capture_output=True, text=True
        )
        assert f"ok       {run}/final/" in check.stdout and "WRONG" not in check.stdout


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    import signal
    import time

    data = write_jsonl(tmp_path / "t.jsonl", [{"text": "the river runs past the green hills " * 4}] * 40)
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunelab",
            "pretrain",
            "model=tiny:llama",
            f"data.train={data}",
            "train.max_steps=100000",
            "train.max_len=32",
            f"out={run}",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "resume=auto" in err
    steps = [p.name for p in (run / "checkpoints").iterdir()]
    assert len(steps) == 1 and steps[0].startswith("step-")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lrr=1e-5", "Did you mean 'train.lr'?"),
        ("adaptor=lora", "Did you mean 'adapter'?"),
        ("train.batch_size=lots", "'train.batch_size'"),
    ],
)
def test_config_errors_through_the_cli(cli, override, expected):
    code, _, err = cli("sft", "model=tiny:llama", override)
    assert code == 2 and expected in err


def test_missing_training_data_is_a_clear_error(cli, tmp_path):
    code, _, err = cli("sft", "model=tiny:llama", f"data.train={tmp_path}/nope.jsonl")
    assert code == 2 and "does not exist" in err
    code, _, err = cli("sft", "model=tiny:llama")
    assert code == 2 and "data.train" in err


@pytest.mark.parametrize("command", ["pretrain", "sft", "rm", "rl", "dpo", "eval", "ladder", "quickstart"])
def test_stage_help_lists_every_config_key(capsys, command):
    # every leaf key of the command's config class appears in its --help, with its description
    import importlib

    from tunelab.cli import STAGES, main
    from tunelab.commands.keys import key_rows

    name = STAGES[command][0] if command in STAGES else "LadderConfig"
    cls = getattr(importlib.import_module("tunelab.config.schema"), name)
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    listed = {
        ln.split()[0] for ln in capsys.readouterr().out.splitlines() if ln.startswith("    ") and ln.split()
    }
    rows = key_rows(cls)
    assert len(rows) > 10
    assert {key for _, key, _, _ in rows} <= listed


def test_sft_help_shows_train_lr_with_its_description_and_default(capsys):
    from tunelab.cli import main

    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("train.lr "))
    assert "0.0002" in line and "peak learning rate" in line
    assert "lora.r " in out and "data.train " in out


def test_rl_help_shows_the_stages_own_defaults(capsys):
    from tunelab.cli import main

    with pytest.raises(SystemExit):
        main(["rl", "--help"])
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("train.schedule "))
    assert "constant" in line  # RL's own schedule, not the shared section's cosine
