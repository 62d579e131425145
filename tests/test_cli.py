"""The command line end to end: help, generate, data check, and one-paragraph errors (no traceback)."""

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
