"""What every benchmark shares: running one side in its own process, its peak memory, the machine's
matmul peak, the model-FLOPs formula, medians and the markdown table.

A side is a child process `python -m bench.<workload> --side NAME ...` that prints one line
`RESULT {json}` at the end; the parent reads its peak resident memory from `os.wait4`, so a side's
memory never mixes with another's, and a side's import and load time never counts in its figure.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

# Both sides of every comparison run under the same environment, set before torch loads.
CHILD_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
}
# `--omp-wait passive`, for a CPU shared with other busy processes: there OpenMP's default active spin-wait
# made every small matmul 3-4x slower with 2 threads (a 16x576x1536 GEMM: 3.9 ms active, 1.1 ms passive,
# measured here while two other jobs ran). On a quiet machine passive waiting costs instead: each of the
# ~1000 small ops of a decode step wakes the threads (SmolLM2 decode step, batch 16: 113 ms active, 133 ms
# passive), so the default leaves OpenMP's own setting, which is what a user's run gets.
OMP_WAIT = {"active": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}


def emit(result: dict) -> None:
    """The child's last word: one line the parent parses."""
    print("RESULT " + json.dumps(result), flush=True)


@dataclass
class Run:
    side: str
    result: dict
    peak_rss_mb: float
    wall_s: float


def run_side(module: str, side: str, args: list[str], log: Path) -> Run:
    """Run one side of a workload in a fresh process; its output goes to `log`."""
    cmd = [sys.executable, "-m", f"bench.{module}", "--side", side, *args]
    env = {**os.environ, **CHILD_ENV}
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).parent.parent
        )
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    text = log.read_text()
    line = next((x for x in reversed(text.splitlines()) if x.startswith("RESULT ")), None)
    if os.waitstatus_to_exitcode(status) != 0 or line is None:
        tail = "\n".join(text.splitlines()[-25:])
        raise RuntimeError(f"{module} --side {side} failed (log {log}):\n{tail}")
    return Run(side, json.loads(line[len("RESULT ") :]), usage.ru_maxrss / 1024, wall)  # KiB on Linux


def matmul_peak(seconds: float = 2.0) -> float:
    """fp32 GFLOP/s of a 1024 x 576 x 1536 matmul (SmolLM2's MLP shape), in this process."""
    import torch

    a, b = torch.randn(1024, 576), torch.randn(576, 1536)
    for _ in range(3):
        a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * 1024 * 576 * 1536 * n / (time.perf_counter() - start) / 1e9


# ---- model FLOPs -------------------------------------------------------------------------------------
MFU_FORMULA = (
    "model FLOPs per step = c * N_body * tokens + h * V * d * scored + a * 2 * L * d * sum(T^2); "
    "N_body = parameters outside embedding and head (SmolLM2: 106.2M), tokens = real (unpadded) tokens, "
    "scored = positions whose logits the loss needs, T = each sequence's real length (causal attention: "
    "QK^T and AV over half the T x T square = 2 L d T^2 forward). Training a frozen base (LoRA, DPO, GRPO): "
    "c = 4 (forward + input gradients), h = 4, a = 3; full fine-tuning: c = 6, h = 6, a = 3; forward only "
    "(reference, generation): c = 2, h = 2, a = 1. Adapter FLOPs (<2%) are not counted. "
    "MFU = model FLOPs / step time / matmul peak, the peak being a 1024x576x1536 fp32 GEMM measured in the same run."
)


@dataclass
class Shape:
    n_body: int
    vocab: int
    hidden: int
    layers: int

    @classmethod
    def of(cls, model) -> Shape:
        c = model.config
        n_body = sum(
            p.numel()
            for n, p in model.named_parameters()
            if "embed" not in n and "lm_head" not in n and "lora" not in n
        )
        return cls(n_body, c.vocab_size, c.hidden_size, c.num_hidden_layers)

    def flops(self, lengths: list[int], scored: int, mode: str) -> float:
        """Model FLOPs of sequences of real `lengths` with `scored` logit positions; mode in frozen|full|forward."""
        c, h, a = {"frozen": (4, 4, 3), "full": (6, 6, 3), "forward": (2, 2, 1)}[mode]
        attention = 2 * self.layers * self.hidden * sum(t * t for t in lengths)
        return c * self.n_body * sum(lengths) + h * self.vocab * self.hidden * scored + a * attention


# ---- aggregation -------------------------------------------------------------------------------------
@dataclass
class Workload:
    name: str
    title: str
    module: str
    sides: list[str]  # the first is tunelab
    args: list[str] = field(default_factory=list)
    unit: str = "tokens/s"
    higher_is_better: bool = True
    goal: float | None = None  # tunelab / other ratio it should reach
    note: str = ""


def summarise(work: Workload, runs: list[Run], peaks: list[float]) -> dict:
    """Medians over the repeats of each side, ratios against tunelab, memory, MFU."""
    peak = statistics.median(peaks)
    sides = {}
    for side in work.sides:
        mine = [r for r in runs if r.side == side]
        figure = statistics.median(r.result["figure"] for r in mine)
        flops = [r.result.get("flops_per_s") for r in mine]
        sides[side] = {
            "figure": figure,
            "figures": [r.result["figure"] for r in mine],
            "peak_rss_mb": max(r.peak_rss_mb for r in mine),
            "mfu": statistics.median(flops) / 1e9 / peak if all(flops) else None,
            "detail": [r.result for r in mine],
        }
    me = sides[work.sides[0]]["figure"]
    for side in work.sides[1:]:
        other = sides[side]["figure"]
        sides[side]["tunelab_speedup"] = me / other if work.higher_is_better else other / me
        sides[side]["tunelab_memory_ratio"] = sides[work.sides[0]]["peak_rss_mb"] / sides[side]["peak_rss_mb"]
    return {
        "workload": work.name,
        "title": work.title,
        "unit": work.unit,
        "goal_speedup": work.goal,
        "matmul_peak_gflops": peak,
        "matmul_peaks": peaks,
        "sides": sides,
        "mfu_formula": MFU_FORMULA,
        "note": work.note,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"


def table(summaries: list[dict]) -> str:
    """Markdown: one row per (workload, other side)."""
    lines = [
        "| workload | tunelab | other | other side | tunelab speed-up (goal) | peak RSS tunelab / other | MFU tunelab / other | matmul peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summaries:
        names = list(s["sides"])
        me = s["sides"][names[0]]
        for other_name in names[1:]:
            other = s["sides"][other_name]
            speed = f"{other['tunelab_speedup']:.2f}x"
            if s["goal_speedup"]:
                mark = "met" if other["tunelab_speedup"] >= s["goal_speedup"] else "missed"
                speed += f" (≥ {s['goal_speedup']:g}x: {mark})"
            mfu = (
                f"{fmt(100 * me['mfu'], 2)}% / {fmt(100 * other['mfu'], 2)}%"
                if me["mfu"] is not None and other["mfu"] is not None
                else "–"
            )
            lines.append(
                f"| {s['title']} | {fmt(me['figure'])} {s['unit']} | {fmt(other['figure'])} {s['unit']} | "
                f"{other_name} | {speed} | {me['peak_rss_mb'] / 1024:.2f} / {other['peak_rss_mb'] / 1024:.2f} GB | "
                f"{mfu} | {s['matmul_peak_gflops']:.0f} GFLOP/s |"
            )
    return "\n".join(lines)


def median_rate(units: list[float], seconds: list[float]) -> float:
    """Units per second over the measured steps (total units / total time: long steps weigh more)."""
    return sum(units) / sum(seconds)


# ---- TRL side ----------------------------------------------------------------------------------------
def trl_setting(pairs: list[str]) -> dict:
    """key=value strings -> SFTConfig keyword arguments (true/false/ints understood)."""
    out = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        out[key] = {"true": True, "false": False}.get(value.lower(), int(value) if value.isdigit() else value)
    return out


class StepTimer:
    """A TrainerCallback's worth of timing: seconds of every optimizer step."""

    def __init__(self):
        self.seconds, self._t0 = [], 0.0

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                timer._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                timer.seconds.append(time.perf_counter() - timer._t0)

        return Timer()


def count_inputs(trainer, seen: list) -> None:
    """Record (document lengths, scored positions) of every training batch a TRL trainer computes a loss on:
    scored = labelled next tokens (SFT), completion tokens (DPO), 0 (reward model)."""
    original = trainer.compute_loss

    def counting(model, inputs, *args, **kwargs):
        if model.training:
            if "labels" in inputs and inputs["labels"].dim() == 2:
                scored = int((inputs["labels"][:, 1:] != -100).sum())
            elif "completion_mask" in inputs:
                scored = int(inputs["completion_mask"].sum())
            else:
                scored = 0
            if "attention_mask" in inputs:
                lengths = inputs["attention_mask"].sum(1).tolist()
            else:  # padding-free: one row whose documents restart their position ids
                pos = inputs["position_ids"][0].tolist()
                starts = [k for k, p in enumerate(pos) if p == 0] + [len(pos)]
                lengths = [b - a for a, b in zip(starts, starts[1:])]
            seen.append((lengths, scored))
        return original(model, inputs, *args, **kwargs)

    trainer.compute_loss = counting
