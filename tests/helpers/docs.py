"""The shell blocks of the docs, as a newcomer would run them, on a short budget.

    blocks = shell_blocks(Path("README.md"))          # every ```bash block, in order
    for block in blocks:
        for command in block.commands: run(shorten(command))

A block is skipped only when the line before its fence says why, in a comment the page does not show:
`<!-- docs-test: skip (needs a GPU) -->`. `shorten` keeps each command's meaning and cuts its budget:
the embedded model becomes the tiny random one, training stages run 2 steps, evaluations score 2 rows.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")

STAGES = ("pretrain", "sft", "rm", "rl", "dpo")
STAGE_BUDGET = ["train.max_steps=2", "train.max_len=128"]  # always: the budget wins over the command's
STAGE_OFF = ["train.save_every=null", "train.eval_every=null"]  # only where the command does not set them
EXTRA = {  # per command: keys that cut its budget further
    "rl": ["rl.group=2", "rl.prompts_per_step=1", "rollout.max_new_tokens=4"],
    "eval": ["eval.limit=2", "prompting.cot_max_new_tokens=8", "prompting.samples=2"],
}
# budgets that win over the command's own value; every other key is added only where the command
# does not set it (`rl.prompts_per_step=2` on 2 processes must stay 2)
FORCED = {"train.max_steps", "eval.limit", "lora.steps", "full.steps", "prompt_tuning.steps", "rl.steps"}
LADDER_BUDGET = [
    "eval.limit=4",
    "eval.train_limit=2",
    "lora.steps=2",
    "full.steps=2",
    "prompt_tuning.steps=2",
    "best_of_n.prompts=4",
    "best_of_n.samples=2",
    "best_of_n.rm.steps=2",
    "rl.steps=1",
    "retention.task=null",
]


@dataclass
class Block:
    file: Path
    line: int  # of the opening fence, 1-based
    text: str
    skip: str | None = None  # why it is not run
    commands: list[tuple[str, int]] = field(
        default_factory=list
    )  # (command, the exit status it should end with)


def shell_blocks(path: Path) -> list[Block]:
    """Every ```bash / ```sh / ```shell block of a Markdown file, with its commands."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, j = i, i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        if match.group(1) in ("bash", "sh", "shell"):
            skip = SKIP.search(lines[start - 1]) if start else None
            text = "\n".join(lines[start + 1 : j])
            blocks.append(Block(path, start + 1, text, skip.group(1) if skip else None, commands_of(text)))
        i = j + 1
    return blocks


def commands_of(text: str) -> list[tuple[str, int]]:
    """Shell commands of a block: continuation lines joined, comments and blank lines dropped.

    A command documented to fail says so in its comment (`# exits 2: ...`); that is its expected status.
    """
    joined = re.sub(r"\s*\\\n\s*", " ", text)
    out = []
    lines = iter(joined.splitlines())
    for line in lines:
        heredoc = re.search(r"<<-?\s*'?(\w+)'?", _strip_comment(line))
        if heredoc:  # `cat > f <<'EOF'` ... `EOF`: one command, its lines kept as written
            body = []
            for more in lines:
                body.append(more)
                if more.strip() == heredoc.group(1):
                    break
            out.append(("\n".join([_strip_comment(line).rstrip(), *body]), 0))
            continue
        command = _strip_comment(line).strip()
        if command:
            status = re.search(r"#.*\bexits (\d+)", line[len(_strip_comment(line)) :])
            out.append((command, int(status.group(1)) if status else 0))
    return out


def _strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a # inside quotes is kept)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def shorten(command: str) -> str:
    """The same command on the tiny model and a budget of seconds (see the module docstring)."""
    command = command.replace("smollm2-135m", "tiny:llama")
    words = shlex.split(command)
    if "tunelab" not in words:
        return command
    at = words.index("tunelab")
    if at > 0 and words[at - 1] == "-m":
        pass  # `torchrun ... -m tunelab sft ...`
    sub = words[at + 1] if at + 1 < len(words) else ""
    keys = " ".join(w.split("=", 1)[0] for w in words if "=" in w and not w.startswith("-"))
    extra: list[str] = []
    if sub in STAGES or sub == "eval":
        if not re.search(r"(^| )model(\.name)?( |$)", keys):
            extra.append("model=tiny:llama")
        if sub in STAGES:
            extra += STAGE_BUDGET + STAGE_OFF
        extra += EXTRA.get(sub, [])
    elif sub in ("ladder", "quickstart"):
        if not re.search(r"(^| )model(\.name)?( |$)", keys):
            extra.append("model=tiny:llama")
        extra += LADDER_BUDGET
    set_here = keys.split()
    extra = [e for e in extra if e.split("=")[0] in FORCED or e.split("=")[0] not in set_here]
    return command + "".join(f" {shlex.quote(e)}" for e in extra)
