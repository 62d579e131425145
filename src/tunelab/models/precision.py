"""The number format a model computes in: `train.precision` auto | fp32 | bf16 | fp16.

    p = resolve("auto")              # Precision("fp32", why="bf16 matmul 48 GFLOP/s vs fp32 250 ...")
    with using(p):                   # a command's whole run: every forward below honours p
        with compute():              # around each forward (the loop, generation, scoring)
            logits = model(...)

Mixed precision the way peers do it (torch.autocast), so that the numbers that decide stay exact:
- weights, gradients and optimizer state stay fp32 (models load in fp32 and are never cast); inside
  `compute()` matmuls run in bf16 (or fp16), and autocast casts each weight as it is used;
- log-softmax, losses, KL, advantages and rewards are computed on `.float()` values
  (models/forward.logprobs_of, models/reward, losses/);
- fp16 needs a gradient scaler (the loop keeps one) and a CUDA device: on a CPU it is refused.

`auto` = bf16 on a CUDA device that supports it; on a CPU, bf16 when a measured bf16 matmul runs at
least `AUTO_MIN_GAIN` times as fast as fp32 (CPUs with AMX), fp32 otherwise. The measurement (about a
second) is cached per machine in `$TUNELAB_CACHE/precision.json`, keyed by the CPU's model and flags,
the torch version and the thread count. `TUNELAB_AUTO_PRECISION=fp32|bf16` fixes what `auto` means
without measuring (the test suite sets fp32, so its numbers do not depend on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.errors import TunelabError

NAMES = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
AUTO_MIN_GAIN = 1.3  # bf16 must beat fp32 clearly: autocast's casts eat part of a small gain
# one projection of SmolLM2 at batch 8 x 256 tokens: (2048 x 576) @ (576 x 1536)
PEAK_SHAPE = (2048, 576, 1536)
CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16 | fp16: what computes, never "auto"
    device_type: str = "cpu"
    why: str = "asked for"
    requested: str = "fp32"

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    @property
    def mixed(self) -> bool:
        return self.name != "fp32"

    def autocast(self):
        """The context a forward runs in: torch.autocast for bf16 / fp16, nothing for fp32."""
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def record(self) -> dict:
        return {"precision": self.name, "precision_requested": self.requested, "precision_why": self.why}


FP32 = Precision("fp32")
_CURRENT: ContextVar[Precision] = ContextVar("tunelab_precision", default=FP32)


@contextlib.contextmanager
def using(precision: Precision) -> Iterator[Precision]:
    """Run everything inside with `precision` (a command's whole run: training, evaluation, sampling)."""
    token = _CURRENT.set(precision)
    try:
        yield precision
    finally:
        _CURRENT.reset(token)


def current() -> Precision:
    return _CURRENT.get()


def compute():
    """The autocast context of the precision in use (see `using`): wrap every forward in it."""
    return _CURRENT.get().autocast()


@contextlib.contextmanager
def weights_cast_once(model) -> Iterator[None]:
    """Inside one `compute()` region, each weight is cast to bf16 once instead of at every forward.

    autocast caches its cast of a weight for the rest of the region, but only for weights that
    require grad; decoding runs every weight again for each new token, so the frozen ones (a LoRA
    base, a reference model) would be cast as often. They are marked as requiring grad for the while:
    no graph is built (decoding runs under no_grad) and the cached copy is the very cast autocast
    would make each time, so the results are bitwise the same (tests/test_precision.py). Not under
    FSDP, whose parameters are its own."""
    frozen = []
    if current().mixed and not any(hasattr(p, "full_tensor") for p in model.parameters()):
        frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    for p in frozen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


@contextlib.contextmanager
def linears_prepacked(model) -> Iterator[None]:
    """While decoding in bf16 on a CPU (autocast, or bf16 weights), every Linear runs from a copy of its
    weight that oneDNN has laid out for its bf16 kernel once, instead of once per call.

    Decoding multiplies a few rows by every weight for each new token. At 1-16 rows, oneDNN's bf16
    matmul spends much of its time reordering the weight, so the prepacked kernel is 1.4-1.8x faster
    (docs/decisions.md, "Decoding from prepacked weights"). The input is cast to bf16 as autocast
    casts it, and the output is bf16 as autocast's linear gives it; the products agree within bf16
    rounding (tests/test_precision.py). Pack after merging an adapter (`lora_merged`): the copy is of
    the weights as they are on entry, and a merged LoRA's A and B, which do not run then, are left
    alone (240 small weights on SmolLM2, ~160 µs each to reorder: 38 ms a rollout). Packing each Linear
    at its first call instead also left them alone, but placed the packs among the prefill's
    activations: generation's peak memory rose ~50 MB. Nested calls pack once. A no-op for fp32
    weights under fp32, for fp16, CUDA, FSDP, under autograd, and where oneDNN has no bf16 kernel."""
    autocast_bf16 = current().name == "bf16" and current().device_type == "cpu"
    idle = _merged_adapter_linears(model)
    linears = [
        m
        for m in model.modules()
        if type(m) is torch.nn.Linear
        and id(m) not in idle
        and "forward" not in vars(m)
        and (autocast_bf16 or m.weight.dtype == torch.bfloat16)  # the Linear computes in bf16
    ]
    if not linears or not _prepacks(model):
        yield
        return
    for m in linears:  # packed anew in every region: a weight may have changed since (an update, a merge)
        m.forward = _PackedLinear(m)
    try:
        yield
    finally:
        for m in linears:
            del m.forward


def _merged_adapter_linears(model) -> set[int]:
    """ids of the Linears a merged PEFT adapter holds (its A and B): a merged layer runs its base only."""
    return {
        id(m)
        for layer in model.modules()
        if getattr(layer, "merged", False) is True
        for name in ("lora_A", "lora_B")
        for m in getattr(layer, name, {}).values()
    }


class _PackedLinear:
    """A Linear's forward from its prepacked bf16 weight: (..., in) -> (..., out) in bf16."""

    def __init__(self, linear: torch.nn.Linear):
        weight, bias = linear.weight.detach(), linear.bias
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.to(torch.bfloat16))
        self.bias = None if bias is None else bias.detach().to(torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(
            x.to(torch.bfloat16), self.packed, self.bias, "none", [], ""
        )


def _prepacks(model) -> bool:
    if torch.is_grad_enabled():
        return False
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False
    params = list(model.parameters())
    return all(t.device.type == "cpu" and not hasattr(t, "full_tensor") for t in params)


def default_device_type() -> str:
    """Where a run computes: CUDA when there is one (as accelerate decides), else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve(requested: str = "auto", device_type: str | None = None, peaks: dict | None = None) -> Precision:
    """What `requested` means on `device_type` (default: this machine's), and why. `peaks` (GFLOP/s by
    precision) replaces the measurement: tests force it."""
    device_type = device_type or default_device_type()
    if requested not in NAMES:
        raise TunelabError(f"train.precision: '{requested}' is not one of {', '.join(NAMES)}.")
    if requested == "auto":
        return _auto(device_type, peaks)
    if requested == "fp16" and device_type != "cuda":
        raise TunelabError(
            "train.precision=fp16 needs a CUDA device (fp16 trains only with a gradient scaler, and CPUs "
            "have no fast fp16 matmul). On a CPU use bf16 or fp32, or auto to let tunelab measure."
        )
    if requested == "bf16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TunelabError("train.precision=bf16: this GPU has no bf16 support; use fp16 or fp32.")
    return Precision(requested, device_type, "asked for", requested)


def _auto(device_type: str, peaks: dict | None) -> Precision:
    forced = os.environ.get("TUNELAB_AUTO_PRECISION")
    if forced:
        if forced not in ("fp32", "bf16"):
            raise TunelabError(f"TUNELAB_AUTO_PRECISION={forced}: expected fp32 or bf16.")
        return Precision(forced, device_type, f"TUNELAB_AUTO_PRECISION={forced}", "auto")
    if device_type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "cuda", f"{torch.cuda.get_device_name()} supports bf16", "auto")
        return Precision("fp32", "cuda", f"{torch.cuda.get_device_name()} has no bf16", "auto")
    peaks = peaks or cpu_peaks()
    gain = peaks["bf16"] / max(peaks["fp32"], 1e-9)
    figures = f"bf16 matmul {peaks['bf16']:.0f} GFLOP/s vs fp32 {peaks['fp32']:.0f} ({gain:.2f}x)"
    if gain >= AUTO_MIN_GAIN:
        return Precision("bf16", "cpu", f"{figures}, measured on this CPU", "auto")
    return Precision("fp32", "cpu", f"{figures}, measured on this CPU: bf16 is not clearly faster", "auto")


def cpu_flags() -> dict[str, bool]:
    """The CPU features that decide bf16 speed (from /proc/cpuinfo; all False where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return dict.fromkeys(CPU_FLAGS, False)
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return {f: f in flags for f in CPU_FLAGS}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def matmul_gflops(
    dtype: str = "float32", shape: tuple[int, int, int] = PEAK_SHAPE, repeats: int = 5
) -> float:
    """Speed of an (m x k) @ (k x n) matmul in `dtype` on this CPU now: the best of a few runs."""
    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(getattr(torch, dtype))
    b = torch.randn(k, n, generator=gen).to(getattr(torch, dtype))
    a @ b  # warm-up (oneDNN picks and caches its kernel)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


def measure_peaks(shape: tuple[int, int, int] = PEAK_SHAPE, rounds: int = 8) -> dict[str, float]:
    """{"fp32": GFLOP/s, "bf16": GFLOP/s}: the best of `rounds` runs each, the two precisions taking
    turns, so that another job on the machine slows both alike (a second or two)."""
    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
    pairs = {"fp32": (a, b), "bf16": (a.bfloat16(), b.bfloat16())}
    best = dict.fromkeys(pairs, float("inf"))
    for x, y in pairs.values():
        x @ y  # warm-up (oneDNN picks and caches its kernel)
    for _ in range(rounds):
        for name, (x, y) in pairs.items():
            start = time.perf_counter()
            x @ y
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: round(2 * m * k * n / t / 1e9, 1) for name, t in best.items()}


def machine_gflops(size: int = 1024, repeats: int = 5, dtype: str = "float32") -> float:
    """Speed of a size x size matmul in `dtype` now (what `tunelab plan` scales its time estimates by)."""
    return matmul_gflops(dtype, (size, size, size), repeats)


def _cache_file() -> Path:
    return Path(os.environ.get("TUNELAB_CACHE", Path.home() / ".cache" / "tunelab")) / "precision.json"


def _machine_key() -> str:
    flags = ",".join(f for f, on in cpu_flags().items() if on)
    return f"{cpu_model()}|{flags}|torch {torch.__version__}|{torch.get_num_threads()} threads"


def cpu_peaks(refresh: bool = False) -> dict:
    """{"fp32": GFLOP/s, "bf16": GFLOP/s, "measured": date} of this CPU, measured once and cached."""
    path, key = _cache_file(), _machine_key()
    cache = {}
    with contextlib.suppress(OSError, ValueError):
        cache = json.loads(path.read_text())
    if not refresh and isinstance(cache.get(key), dict) and {"fp32", "bf16"} <= cache[key].keys():
        return cache[key]
    peaks = {**measure_peaks(), "measured": time.strftime("%Y-%m-%d %H:%M")}
    cache = cache if isinstance(cache, dict) else {}
    cache[key] = peaks
    with contextlib.suppress(OSError):  # a read-only home only costs a second next time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, path)
    return peaks
