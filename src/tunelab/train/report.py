"""report.md: what ran, on what data, what came out, and where everything is."""

from __future__ import annotations

import statistics
from pathlib import Path

from tunelab.train.checkpoint import all_steps, folder_size
from tunelab.train.log import read_metrics


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameters; tied weights counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.0f} KB"


def write_report(run_dir: Path, cfg, n_params: tuple[int, int], summary: dict, data: dict) -> Path:
    rows = read_metrics(run_dir)
    train_rows = [r for r in rows if isinstance(r.get("loss"), float)]
    trainable, total = n_params
    speeds = [r["tokens_per_s"] for r in train_rows[1:] if r.get("tokens_per_s")] or [
        r["tokens_per_s"] for r in train_rows
    ]
    evals = [r for r in rows if "eval_loss" in r]
    final = run_dir / "final"
    checkpoints = all_steps(run_dir / "checkpoints")
    lines = [
        f"# {summary['stage']} run: {run_dir.name}",
        "",
        f"- model: `{cfg.model.name}`, adapter: `{cfg.adapter}`",
        f"- steps: {summary['steps_done']} of {summary['total_steps']}"
        + (" (stopped early)" if summary["stopped_early"] else ""),
        f"- trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.3f}%)",
        f"- final/ on disk: {_mb(folder_size(final)) if final.exists() else 'n/a'}"
        + (f"; a checkpoint: {_mb(folder_size(checkpoints[-1][1]))}" if checkpoints else ""),
        f"- processes: {summary.get('processes', 1)} ({summary.get('distributed', 'none')}); "
        f"peak memory of rank 0: {summary['peak_memory_mb']:.0f} MB"
        + (
            f" (every rank: {', '.join(f'{mb:,}' for mb in summary['peak_rss_mb_per_rank'])} MB)"
            if len(summary.get("peak_rss_mb_per_rank", [])) > 1
            else ""
        ),
        f"- precision: {summary.get('precision', 'fp32')} (train.precision={cfg.train.precision}: "
        f"{summary.get('precision_why', 'asked for')}); weights and optimizer state in fp32",
        f"- speed: {statistics.median(speeds):.0f} {summary.get('unit', 'target tokens')}/s (median over steps)"
        if speeds
        else "- speed: n/a",
        f"- time: {summary['elapsed_s']:.1f} s, {summary['tokens']:,} {summary.get('unit', 'target tokens')}",
        "",
        "## Results",
        "",
    ]
    if train_rows:
        lines.append(
            f"- train loss: {train_rows[0]['loss']:.4f} at step {train_rows[0]['step']} -> {train_rows[-1]['loss']:.4f} at step {train_rows[-1]['step']}"
        )
    if evals:
        lines.append(
            f"- eval loss: {evals[0]['eval_loss']:.4f} at step {evals[0]['step']} -> {evals[-1]['eval_loss']:.4f} at step {evals[-1]['step']}"
        )
    if summary.get("best") is not None:
        lines.append(
            f"- best {cfg.train.early_stop.metric}: {summary['best']:.4f} at step {summary['best_step']} (kept as final/)"
        )
    guard = summary["guard"]
    lines += [
        "",
        "## Divergence guard",
        "",
        f"- updates skipped: {guard['skipped']}, rollbacks: {guard['rollbacks']}",
    ]
    lines += [
        f"  - step {e['step']}: {e['event']}" + (f" ({e['reason']})" if "reason" in e else "")
        for e in guard["events"][:20]
    ]
    if summary.get("failed"):
        lines += ["", "## Failed", "", summary["failed"]]
    if summary.get("history"):  # resumed with changed settings: history.jsonl has every start
        lines += ["", "## Settings changed on resume", ""] + [f"- {h}" for h in summary["history"]]
    if data:
        lines += ["", "## Data", ""] + [f"- {k}: {v}" for k, v in data.items()]
    lines += [
        "",
        "## Where things are",
        "",
        "- `config.yaml`: the resolved config; `metrics.jsonl` and `events.*` (TensorBoard): per-step metrics",
        "- `plots/`: " + ", ".join(sorted(p.name for p in (run_dir / "plots").glob("*.png"))),
        "- `final/`: "
        + (
            "PEFT adapter (`PeftModel.from_pretrained(base, path)`)"
            if cfg.adapter != "none"
            else "HF model folder (`from_pretrained(path)`)"
        ),
        f"- `checkpoints/`: {', '.join(p.name for _, p in checkpoints) or 'none'} (resume with `resume=auto out={run_dir}`)",
    ]
    if (run_dir / "merged").is_dir():
        lines.append("- `merged/`: the adapter merged into the base model (an HF model folder)")
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
