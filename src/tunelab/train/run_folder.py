"""The run folder (DESIGN.md): what a run leaves behind, and how it is written.

    runs/NAME/  config.yaml  metrics.jsonl  events.*  plots/  checkpoints/step-N/  final/  report.md

`final/` (and `best/`) are written atomically; a write that fails (mostly a full disk) becomes one
paragraph for the user that says how to go on.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from tunelab.config import dump_config
from tunelab.config.schema import StageConfig
from tunelab.models import precision
from tunelab.train import checkpoint as ckpt
from tunelab.train.checkpoint import how_to_go_on, writing  # noqa: F401  (the loop imports them from here)
from tunelab.train.dist import Dist
from tunelab.train.report import write_report

# what a fresh start removes, so that nothing of an older run in the same folder mixes in
OLD_RUN = [
    "checkpoints",
    "final",
    "best",
    "merged",
    "plots",
    "metrics.jsonl",
    "report.md",
    "samples.jsonl",
    "summary.json",
]


def default_run_dir(stage: str) -> Path:
    return Path("runs") / f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"


def clear_old_run(run_dir: Path) -> None:
    for old in [*OLD_RUN, *[p.name for p in run_dir.glob("events.*")]]:
        target = run_dir / old
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)


def write_config(run_dir: Path, cfg: StageConfig, stage: str, total: int, dist: Dist) -> None:
    """The resolved config, with what was derived from it (global batch, total steps, processes)."""
    with writing(f"{run_dir / 'config.yaml'}", run_dir):
        _write_config(run_dir, cfg, stage, total, dist)


def _write_config(run_dir: Path, cfg: StageConfig, stage: str, total: int, dist: Dist) -> None:
    tc = cfg.train
    used = precision.current()  # what train.precision resolved to on this machine, and why
    (run_dir / "config.yaml").write_text(
        dump_config(cfg) + f"# derived\nstage: {stage}\ntotal_steps: {total}\n"
        f"global_batch: {tc.batch_size * tc.grad_accum * dist.world}\n"
        f"processes: {dist.world}\ndistributed_mode: {dist.mode}\n"
        f"precision: {used.name}\nprecision_why: {json.dumps(used.why)}\n"
    )


def save_final(
    model,
    tok,
    folder: Path,
    cfg: StageConfig | None = None,
    state_dict: dict | None = None,
    weight_files: Path | None = None,
) -> Path:
    """An HF model folder (full fine-tuning) or a PEFT adapter folder, plus the tokenizer; atomically.

    tunelab.json records how prompts were rendered in training, so generate / score render the same way.
    `state_dict`: the weights to write when the model itself holds only a shard of them (FSDP);
    `weight_files`: a folder of safetensors files already written (train/sharded_load.py), moved in.
    """
    import warnings

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        # peft looks the base name up on the hub to see if the vocabulary changed
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Could not find a config file")
            if weight_files is not None:
                tmp.mkdir(parents=True)
                model.config.save_pretrained(tmp)
                if getattr(model, "generation_config", None) is not None:
                    model.generation_config.save_pretrained(tmp)
                for file in weight_files.iterdir():
                    os.replace(file, tmp / file.name)
            else:
                model.save_pretrained(tmp, **({"state_dict": state_dict} if state_dict is not None else {}))
        tok.save_pretrained(tmp)
        if cfg is not None:
            from tunelab.models.portable import record_base

            record_base(tmp, cfg.model.name, cfg.seed)  # a base plain HF/PEFT resolve, not tunelab's alias
            render = {
                "separator": cfg.data.separator,
                "instruction": cfg.data.instruction,
                "system": cfg.data.system,
            }
            (tmp / "tunelab.json").write_text(
                json.dumps({"model": cfg.model.name, "adapter": cfg.adapter, "render": render}, indent=1)
            )
    except ckpt.WRITE_ERRORS:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk: give back what the half folder took
        raise
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def save_final_everywhere(dist: Dist, model, tok, folder: Path, cfg: StageConfig | None = None) -> None:
    """Every rank calls it (FSDP gathers the weights onto rank 0); rank 0 writes."""
    files = None
    if dist.sharded and dist.world > 1:  # tensor by tensor: rank 0 never holds the whole model
        from tunelab.train.sharded_load import gather_final

        state, files = gather_final(dist, model, folder)
    else:
        state = dist.full_state(model)
    if dist.is_main:
        save_final(model, tok, folder, cfg, state_dict=state, weight_files=files)
        if files is not None:
            shutil.rmtree(files, ignore_errors=True)
    dist.barrier()


def write_summary(run_dir: Path, cfg: StageConfig, summary: dict, n_params: tuple[int, int], data: dict):
    """summary.json (for scripts and the ladder) and report.md."""
    summary["trainable_params"], summary["total_params"] = n_params
    with writing(f"the report {run_dir / 'report.md'}", run_dir):
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        write_report(run_dir, cfg, n_params, summary, data)


def trained_now(run_dir: Path, since: float) -> bool:
    """Whether a train() started at `since` (time.time()) wrote the run's report: a finished run rerun
    as it was trains nothing and rewrites nothing, and then neither may a stage's own report section."""
    report = run_dir / "report.md"
    return report.is_file() and report.stat().st_mtime >= since
