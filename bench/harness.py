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
FULL_STEPS = 2  # measured steps of a side in a full run, after its warm-up, unless its workload says more

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
    variant: Variant | None = None  # which precision of the side this run was


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


PEAK_SHAPE = (1024, 576, 1536)  # SmolLM2's MLP projection at 1024 tokens
DTYPES = ("fp32", "bf16")  # the precisions whose matmul peak every run measures


def matmul_peak(seconds: float = 2.0, dtype: str = "fp32") -> float:
    """GFLOP/s of a 1024 x 576 x 1536 matmul (SmolLM2's MLP shape) in `dtype` (fp32|bf16), in this process."""
    import torch

    m, k, n = PEAK_SHAPE
    kind = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a, b = torch.randn(m, k, dtype=kind), torch.randn(k, n, dtype=kind)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * m * k * n * count / (time.perf_counter() - start) / 1e9


def matmul_peaks(seconds: float = 2.0) -> dict[str, float]:
    """Both precisions' peaks, one after the other: {"fp32": GFLOP/s, "bf16": GFLOP/s}."""
    return {d: matmul_peak(seconds, d) for d in DTYPES}


# ---- the machine -------------------------------------------------------------------------------------
CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")  # what decides bf16's speed on a CPU


def cpu_info() -> dict:
    """The CPU a result was measured on: lscpu's model name, the cores this process may use, and whether
    /proc/cpuinfo lists each flag that decides how fast bf16 runs (AMX tiles; AVX-512 BF16; plain AVX)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = set(next((x.split(":", 1)[1].split() for x in text.splitlines() if x.startswith("flags")), []))
    model = next((x.split(":", 1)[1].strip() for x in text.splitlines() if x.startswith("model name")), "?")
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(
            (x.split(":", 1)[1].strip() for x in out.splitlines() if x.startswith("Model name")), model
        )
    except (OSError, subprocess.SubprocessError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "cores": cores, "flags": {f: f in flags for f in CPU_FLAGS}}


def cpu_line(cpu: dict) -> str:
    flags = ", ".join(f"{f} {'yes' if on else 'no'}" for f, on in cpu["flags"].items())
    return f"{cpu['model']}, {cpu['cores']} cores; {flags}"


# ---- precision: what each side runs in ----------------------------------------------------------------
# A bf16 peak under half the fp32 one (a CPU without AMX or AVX-512 BF16: 48 vs 220-310 GFLOP/s measured)
# makes a bf16 side 3-5x slower, too slow to win; there each bf16 side runs one round with no warm-up step
# (the same measured steps), which keeps the whole run near 50 minutes on 2 cores.
SLOW_BF16 = 0.5

PROBE = """
import json
out = {}
try:
    from tunelab.config import load_config
    from tunelab.config.schema import SFTConfig
    load_config(SFTConfig, None, ["train.precision=fp32"])
    out["key"] = True
except Exception as e:
    out["key"], out["key_error"] = False, " ".join(str(e).split(". Valid keys")[0].split())[:300]
try:
    from tunelab.models.precision import resolve
    r = resolve("auto")
    out.update(name=str(r.name), why=str(r.why), source="tunelab.models.precision.resolve('auto')")
except Exception as e:
    out.update(name="fp32", source="fallback",
               why=f"tunelab.models.precision.resolve not usable ({type(e).__name__}: {e}); fp32 assumed"[:400])
print("PROBE " + json.dumps(out))
"""


def probe_precision() -> dict:
    """What tunelab's `train.precision=auto` resolves to on this machine, asked in a fresh process (its
    measurement is tunelab's own); and whether this tunelab knows the key at all.
    {"name": "bf16"|"fp32", "why": ..., "source": ..., "key": bool}"""
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        env={**os.environ, **CHILD_ENV},
        cwd=Path(__file__).parent.parent,
        timeout=600,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("PROBE ")), None)
    if line is None:
        return {
            "name": "fp32",
            "why": f"probe failed: {out.stderr[-300:]}",
            "source": "fallback",
            "key": False,
        }
    return json.loads(line[len("PROBE ") :])


def resolved_precision(run_dir: Path) -> dict:
    """What a tunelab run says it ran in: `train.precision` of its config.yaml (resolved there, with its
    reason), and any precision entry of summary.json."""
    import yaml

    found = {}
    config = run_dir / "config.yaml"
    if config.is_file():
        train = (yaml.safe_load(config.read_text()) or {}).get("train") or {}
        found.update({k: v for k, v in train.items() if "precision" in k})
    summary = run_dir / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        found.update({f"summary.{k}": v for k, v in data.items() if "precision" in k})
    return found


@dataclass
class Variant:
    """One side at one precision: `asked` is what the side is told (auto|fp32|bf16), `computes` the
    precision its matmuls run in (auto resolved), `rounds` how many interleaved rounds it runs."""

    side: str
    asked: str
    computes: str
    rounds: int
    short: bool = False  # a bf16 run where bf16 is slow: 1 round, no warm-up step (Workload.shorter too)
    same_as: str = ""  # "auto": this fp32 run is also tunelab's auto (auto resolved to fp32)

    @property
    def label(self) -> str:
        if self.asked == "auto":
            return f"auto ({self.computes})"
        return f"{self.asked} = auto" if self.same_as else self.asked


def precisions_of(side: str) -> list[str]:
    """tunelab is asked `auto` and `fp32` (its key); TRL (`bf16=True|False`) and HF generate `bf16`, `fp32`."""
    return ["auto", "fp32"] if side == "tunelab" else ["bf16", "fp32"]


def plan(work: Workload, auto: dict, peaks: dict[str, float], rounds: int) -> tuple[list[Variant], list[str]]:
    """Every side at each of its precisions, in run order (same precision side by side: A B A B), and the
    notes that say what was merged or shortened and why."""
    sides = work.sides
    slow = peaks["bf16"] < SLOW_BF16 * peaks["fp32"]
    measured = f"measured bf16 {peaks['bf16']:.0f} vs fp32 {peaks['fp32']:.0f} GFLOP/s"
    notes = []
    if auto["name"] == "fp32":
        notes.append(f"auto = fp32 here ({measured}); tunelab: {auto['why']}")
    else:
        notes.append(f"auto = {auto['name']} here ({measured}); tunelab: {auto['why']}")
    if slow:
        notes.append(
            f"bf16 is slow here ({measured}, under {SLOW_BF16:g}x fp32): bf16 sides ran 1 round "
            "with no warm-up step (same measured steps)"
        )
        notes += [f"{side} at bf16: {why}" for side, (_, _, why) in work.shorter.items()]
    variants = []
    for side in sides:
        for asked in precisions_of(side):
            computes = auto["name"] if asked == "auto" else asked
            if asked == "auto" and computes == "fp32":
                continue  # the fp32 run is tunelab's auto: measured once
            short = slow and computes == "bf16"
            variants.append(
                Variant(
                    side,
                    asked,
                    computes,
                    1 if short else rounds,
                    short=short,
                    same_as="auto"
                    if side == "tunelab" and asked == "fp32" and auto["name"] == "fp32"
                    else "",
                )
            )
    order = {"bf16": 0, "fp16": 1, "fp32": 2}
    variants.sort(key=lambda v: (order.get(v.computes, 3), sides.index(v.side)))
    return variants, notes


# ---- model FLOPs -------------------------------------------------------------------------------------
MFU_FORMULA = (
    "model FLOPs per step = c * N_body * tokens + h * V * d * scored + a * 2 * L * d * sum(T^2); "
    "N_body = parameters outside embedding and head (SmolLM2: 106.2M), tokens = real (unpadded) tokens, "
    "scored = positions whose logits the loss needs, T = each sequence's real length (causal attention: "
    "QK^T and AV over half the T x T square = 2 L d T^2 forward). Training a frozen base (LoRA, DPO, GRPO): "
    "c = 4 (forward + input gradients), h = 4, a = 3; full fine-tuning: c = 6, h = 6, a = 3; forward only "
    "(reference, generation): c = 2, h = 2, a = 1. Adapter FLOPs (<2%) are not counted. "
    "MFU = model FLOPs / step time / matmul peak of the precision the side computed in (fp32, or bf16 for "
    "TRL's bf16=True autocast, tunelab's auto when it resolves to bf16, and generation with bf16 weights), "
    "each peak a 1024x576x1536 GEMM in that precision measured in the same run."
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
    full_steps: int = FULL_STEPS  # measured steps of each side in a full run (after the warm-up)
    # side -> (extra args, its share of the work, why): where bf16 is slow, that side's bf16 run does less
    shorter: dict[str, tuple[list[str], float, str]] = field(default_factory=dict)


def summarise(
    work: Workload, runs: list[Run], peaks: list[dict], variants: list[Variant], notes: list[str]
) -> dict:
    """Medians over the rounds of each side at each precision; each side's fastest precision; tunelab's
    fastest against every other side's fastest (speed and memory at those settings); MFU against the peak
    of the precision each run computed in."""
    peak = {d: statistics.median(p[d] for p in peaks) for d in DTYPES}
    pick = max if work.higher_is_better else min
    sides = {}
    for side in work.sides:
        mine = {}
        for v in (v for v in variants if v.side == side):
            done = [r for r in runs if r.variant is v]
            if not done:
                continue
            flops = [r.result.get("flops_per_s") for r in done]
            mine[v.label] = {
                "asked": v.asked,
                "computes": v.computes,
                "rounds": len(done),
                "figure": statistics.median(r.result["figure"] for r in done),
                "figures": [r.result["figure"] for r in done],
                "peak_rss_mb": max(r.peak_rss_mb for r in done),
                "mfu": statistics.median(flops) / 1e9 / peak[v.computes]
                if all(flops) and v.computes in peak
                else None,
                "detail": [r.result for r in done],
            }
        fastest = pick(mine, key=lambda label: mine[label]["figure"])
        best = mine[fastest]
        ran = {d.get("attention") for entry in mine.values() for d in entry["detail"]} - {None}
        sides[side] = {
            "attention": ", ".join(sorted(ran)) or None,  # a peer's: transformers' own SDPA (peer_model)
            "fastest": fastest,
            "precision": best["computes"],
            "figure": best["figure"],
            "peak_rss_mb": best["peak_rss_mb"],
            "mfu": best["mfu"],
            "precisions": mine,
        }
    me = sides[work.sides[0]]
    for side in work.sides[1:]:
        other = sides[side]
        other["tunelab_speedup"] = (
            me["figure"] / other["figure"] if work.higher_is_better else other["figure"] / me["figure"]
        )
        other["tunelab_memory_ratio"] = me["peak_rss_mb"] / other["peak_rss_mb"]
    return {
        "workload": work.name,
        "title": work.title,
        "unit": work.unit,
        "goal_speedup": work.goal,
        "answers": same_answers(runs),
        "matmul_peak_gflops": peak,
        "matmul_peaks": peaks,
        "sides": sides,
        "notes": [*notes, *([work.note] if work.note else [])],
        "mfu_formula": MFU_FORMULA,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def same_answers(runs: list[Run]) -> dict | None:
    """Greedy generation only: per precision and prompt count, whether every side gave the same answers."""
    digests = {}
    for r in runs:
        if "answers_digest" in r.result:
            key = f"{r.variant.computes}, {r.result.get('prompts', '?')} prompts"
            digests.setdefault(key, {})[f"{r.side} {r.variant.label}"] = r.result["answers_digest"]
    return {p: {"same": len(set(d.values())) == 1, "digests": d} for p, d in digests.items()} or None


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"


def _peaks(s: dict) -> str:
    peak = s["matmul_peak_gflops"]
    if isinstance(peak, dict):  # this format
        return " / ".join(f"{peak[d]:.0f}" for d in DTYPES) + " GFLOP/s"
    return f"{peak:.0f} / – GFLOP/s"  # results from before precisions: fp32 only


def _mfu(x: float | None) -> str:
    return "–" if x is None else f"{fmt(100 * x, 2)}%"


def _attention(side: dict) -> str:
    """Which attention a peer ran: results before 2026-12-06 do not say (their peers ran tunelab's)."""
    return {"stock": " (stock SDPA)", "tunelab": " (tunelab's attention)"}.get(
        side.get("attention") or "", ""
    )


def table(summaries: list[dict]) -> str:
    """Markdown: one row per (workload, other side), each side at its fastest precision."""
    lines = [
        "| workload | tunelab | other | other side | tunelab speed-up (goal) | peak RSS tunelab / other | "
        "MFU tunelab / other | matmul peak fp32 / bf16 |",
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
            # results from before precisions were compared ran fp32 on both sides
            mine, theirs = me.get("fastest", "fp32"), other.get("fastest", "fp32")
            lines.append(
                f"| {s['title']} | {fmt(me['figure'])} {s['unit']}, {mine} | "
                f"{fmt(other['figure'])} {s['unit']}, {theirs} | {other_name}{_attention(other)} | {speed} | "
                f"{me['peak_rss_mb'] / 1024:.2f} / {other['peak_rss_mb'] / 1024:.2f} GB | "
                f"{_mfu(me['mfu'])} / {_mfu(other['mfu'])} | {_peaks(s)} |"
            )
    return "\n".join(lines)


def precision_table(summaries: list[dict]) -> str:
    """Markdown: every side at every precision it ran in (the fastest in bold), rounds and memory."""
    lines = [
        "| workload | side | precision | figure | rounds | peak RSS | MFU (vs its precision's peak) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summaries:
        for side, entry in s["sides"].items():
            for label, v in entry.get("precisions", {}).items():
                name = f"**{label}**" if label == entry["fastest"] else label
                lines.append(
                    f"| {s['workload']} | {side} | {name} | {fmt(v['figure'])} {s['unit']} | {v['rounds']} | "
                    f"{v['peak_rss_mb'] / 1024:.2f} GB | {_mfu(v['mfu'])} |"
                )
    return "\n".join(lines)


def median_rate(units: list[float], seconds: list[float]) -> float:
    """Units per second over the measured steps (total units / total time: long steps weigh more)."""
    return sum(units) / sum(seconds)


# ---- TRL side ----------------------------------------------------------------------------------------
def peer_model(head: str = "lm"):
    """(SmolLM2, tokenizer) for a peer side (TRL, HF generate), running as that peer's users run it.

    tunelab's loader finds the embedded weights (the GGUF converted once into a safetensors folder), but
    it also registers tunelab's attention as transformers' "sdpa" (models/attention.py: bf16 masked rows
    as matrix products, CPU decoding's GQA as one query per head), which made TRL's padded bf16 batches
    and HF generate faster than stock (TRL's reward model: 0.749 -> 0.92 pairs/s). transformers' own
    SDPA goes back in its place here, and `attention` says which one the side ran."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from tunelab.models.load import load_model

    model, tok = load_model("smollm2-135m", head=head)
    AttentionInterface.register("sdpa", sdpa_attention_forward)
    return model, tok


def peer_attention() -> str:
    """Which function transformers runs as "sdpa" in this process: 'stock' or tunelab's."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return "stock" if ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa_attention_forward else "tunelab"


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
