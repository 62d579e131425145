"""Every shell command in README.md and docs/*.md runs, in the order written, in a fresh copy of the
repository, on a short budget (tests/helpers/docs.py): a documented command that stops working fails
the suite. A command fails when it exits non-zero or prints a Python traceback.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.docs import commands_of, shell_blocks, shorten

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHIPPED = ["configs", "examples", "bench", "docs", "README.md", "Makefile", "pyproject.toml"]


def test_short_budget_keeps_the_command_and_cuts_its_cost():
    assert shorten("tunelab sft configs/sft.yaml adapter=none") == (
        "tunelab sft configs/sft.yaml adapter=none model=tiny:llama train.max_steps=2 "
        "train.max_len=128 train.save_every=null train.eval_every=null"
    )
    assert "train.eval_every=null" not in shorten("tunelab sft train.eval_every=2")
    assert "model=tiny:llama" not in shorten("tunelab eval model=runs/a/final task=extract")
    assert shorten("tunelab generate smollm2-135m 'hi'") == "tunelab generate tiny:llama 'hi'"
    assert shorten("ls runs/") == "ls runs/"
    assert commands_of("cat > a.yaml <<'EOF'\nx: 1  # kept\nEOF\nls") == [
        ("cat > a.yaml <<'EOF'\nx: 1  # kept\nEOF", 0),
        ("ls", 0),
    ]
    assert commands_of("tunelab sft \\\n    a=1  # why\n\n# alone\necho '#x'  # exits 3: no") == [
        ("tunelab sft a=1", 0),
        ("echo '#x'", 3),
    ]


SHELL_SYNTAX = set("|&;<>()$`*?{}~!")  # any of these: the command needs bash ([...] is literal in bash too)


def _run(command: str, work: Path, env: dict, zygote) -> tuple[int, str]:
    """(exit status, output) of one command: a plain `tunelab ...` is forked from the warm zygote
    (a second instead of ~5 s of imports), anything else runs in bash."""
    words = shlex.split(command)
    plain = words and words[0] == "tunelab" and not any(ch in SHELL_SYNTAX for ch in command)
    if plain:
        log = work / ".docs-test.log"
        status = zygote.run(words[1:], log, env={"OMP_NUM_THREADS": "1"}, cwd=work)
        return status, log.read_text(errors="replace")
    out = subprocess.run(
        ["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    return out.returncode, out.stderr + out.stdout


def _fresh_copy(tmp_path: Path) -> tuple[Path, dict]:
    """A copy of what a clone ships, with the venv where `source .venv/bin/activate` finds it."""
    work = tmp_path / "repo"
    work.mkdir()
    for name in SHIPPED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("results", "__pycache__"))
        elif src.exists():
            shutil.copy(src, work / name)
    (work / ".venv").symlink_to(Path(sys.executable).parents[1])
    venv_bin = str(Path(sys.executable).parent)
    env = dict(
        os.environ,
        PATH=os.pathsep.join([venv_bin, os.environ.get("PATH", "")]),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
    )
    return work, env


def run_pages(pages: list[Path], work: Path, env: dict, zygote) -> tuple[int, list[str]]:
    """Run every command of `pages` in order in `work`: (commands run, what failed and how)."""
    failures, ran = [], 0
    for page in pages:
        for block in shell_blocks(page):
            if block.skip:
                continue
            for command, status in block.commands:
                short = shorten(command)
                started = time.monotonic()
                code, output = _run(short, work, env, zygote)
                print(f"{time.monotonic() - started:6.1f} s  {page.name}:{block.line}  {short[:120]}")
                ran += 1
                if code != status or "Traceback (most recent call last)" in output:
                    failures.append(
                        f"{page.name}:{block.line}: `{command}` exited {code}, not {status}\n{output[-1500:]}"
                    )
    return ran, failures


def test_every_documented_command_runs(tmp_path, zygote):
    work, env = _fresh_copy(tmp_path)
    ran, failures = run_pages(PAGES, work, env, zygote)
    print(f"\n{ran} documented commands ran")
    assert not failures, f"{len(failures)} of {ran} documented commands failed:\n\n" + "\n\n".join(failures)
    assert ran >= 10


def test_a_documented_command_broken_on_purpose_fails_the_check(tmp_path, zygote):
    work, env = _fresh_copy(tmp_path)
    page = tmp_path / "page.md"
    page.write_text("```bash\ntunelab sft configs/sft.yaml train.lrr=1e-5 out=runs/x\necho fine\n```\n")
    ran, failures = run_pages([page], work, env, zygote)
    assert ran == 2 and len(failures) == 1
    assert (
        "page.md:1: `tunelab sft configs/sft.yaml train.lrr=1e-5 out=runs/x` exited 2, not 0" in failures[0]
    )
    assert "Did you mean 'train.lr'?" in failures[0]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_skipped_block_says_why(page):
    for block in shell_blocks(page):
        assert block.skip is None or block.skip.strip("() "), (
            f"{page.name}:{block.line}: skip without a reason"
        )
