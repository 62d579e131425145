"""What happens around the loop's steps: resuming a run exactly, saving checkpoints, rolling back
after bad updates, and finishing (final model, merged copy, plots, report). train/loop.py keeps the step.

Invariant: a run resumed from checkpoint step-N continues exactly as the uninterrupted run did after
step N (weights, optimizer, RNG, data position, the guard's and the batch source's state).
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunelab.config.schema import StageConfig
from tunelab.models import precision
from tunelab.train import checkpoint as ckpt
from tunelab.train import guard as guarding
from tunelab.train import resume_check
from tunelab.train.dist import Dist
from tunelab.train.guard import Guard
from tunelab.train.log import make_plots
from tunelab.train.process import peak_memory_mb
from tunelab.train.run_folder import (
    clear_old_run,
    save_final,
    save_final_everywhere,
    write_config,
    write_summary,
    writing,
)


@dataclass
class LoopState:
    """Everything besides weights, optimizer and RNG that an exact resume needs."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    micro: int = 0  # micro-batches consumed in this epoch
    lr_scale: float = 1.0  # lowered by each rollback
    tokens: int = 0  # target units trained on
    best: float | None = None
    best_step: int | None = None
    evals_without_gain: int = 0
    elapsed_s: float = 0.0
    guard: dict = field(default_factory=dict)
    scaler: dict = field(default_factory=dict)  # fp16: the gradient scaler's scale and growth tracker


class Checkpoints:
    """The run folder's checkpoints for one run: resume from the newest, save, roll back."""

    def __init__(
        self,
        run_dir: Path,
        model,
        optimizer,
        dist: Dist,
        batches,
        guard: Guard,
        keep_last: int,
        params: list,
        scaler: torch.amp.GradScaler | None = None,
    ):
        self.run_dir, self.root = run_dir, run_dir / "checkpoints"
        self.params = params  # the trainable ones: no checkpoint is written from non-finite weights
        self.nothing_to_do = False  # set by resume(): the folder holds this run, finished
        self.model, self.optimizer, self.dist, self.batches, self.guard = (
            model,
            optimizer,
            dist,
            batches,
            guard,
        )
        self.keep_last = keep_last
        self.scaler = scaler  # fp16's: its loss scale resumes where it was, or the next steps would overflow
        self.source_file = "source.pt" if dist.rank == 0 else f"source-{dist.rank}.pt"
        self.saved_step: int | None = None  # a checkpoint holds this step already

    def resume(self, cfg: StageConfig, stage: str, total: int, console) -> LoopState:
        """The loop state to start from (`resume`: auto | never | PATH, verified against its manifest);
        a fresh start clears an old run. Going on with settings that change what is trained is refused
        (train/resume_check.py); a finished run rerun as it was sets `nothing_to_do` and rewrites nothing."""
        resume_from = ckpt.resume_point(cfg.resume, self.root, console.out)  # verified, or a message
        start = resume_check.check(self.run_dir, cfg, stage, resume_from, self.dist.world)
        state = LoopState()
        if resume_from is not None:
            state = LoopState(**ckpt.load(resume_from, self.model, self.optimizer, self.dist))
            self.guard.load_state_dict(state.guard)
            self.restore_scaler(state)
            if (resume_from / self.source_file).is_file() and hasattr(self.batches, "load_state_dict"):
                self.batches.load_state_dict(torch.load(resume_from / self.source_file, weights_only=False))
            console.out(f"resuming from {resume_from} (step {state.step} of {total})")  # no markup in paths
            resume_check.announce(start, console.out)
            self.saved_step = state.step
        if start.finished and state.step >= total:  # a finished run is never rewritten by a rerun
            console.out(resume_check.nothing_to_do(self.run_dir))
            self.nothing_to_do = True
            return state
        dist = self.dist
        if resume_from is None and dist.is_main:  # a fresh start: nothing of an older run may mix in
            clear_old_run(self.run_dir)
        if dist.is_main:
            write_config(self.run_dir, cfg, stage, total, dist)
            resume_check.record(self.run_dir, state.step, start)
        dist.barrier()  # the old run's files are gone before any rank writes a checkpoint
        return state

    def save(self, state: LoopState, console=None) -> None:
        if self.saved_step == state.step:  # rewriting it would only open a moment in which it is missing
            return
        if not guarding.weights_finite(self.params, self.dist):  # never a checkpoint to roll back into damage
            if console is not None:
                console.print(
                    f"[yellow]step {state.step}: weights not finite; no checkpoint written[/yellow]"
                )
            return
        state.guard = self.guard.state_dict()
        state.scaler = self.scaler.state_dict() if self.scaler is not None else {}
        batches = self.batches
        extra = {self.source_file: batches.state_dict()} if hasattr(batches, "state_dict") else None
        folder = self.root / f"step-{state.step}"
        with writing(f"checkpoint {folder}", self.run_dir):
            ckpt.save(folder, self.model, self.optimizer, vars(state), self.dist, extra)
        self.saved_step = state.step
        if self.dist.is_main:
            ckpt.prune(self.root, self.keep_last)

    def restore_scaler(self, state: LoopState) -> None:
        """The gradient scaler as the checkpoint left it (a checkpoint without one: as it starts)."""
        if self.scaler is not None and state.scaler:
            self.scaler.load_state_dict(state.scaler)

    def roll_back(self, state: LoopState, lr_factor: float, console) -> None:
        """Back to the newest checkpoint with a lower lr; without one, keep the weights (bad updates were
        never applied) and only lower the lr: going back to step 0 would throw away all the training."""
        last = ckpt.latest(self.root)  # the newest that verifies (and none holds poisoned weights)
        if last is not None:
            ckpt.load_weights(last, self.model, self.optimizer, self.dist)
        elif not guarding.weights_finite(self.params, self.dist):
            raise guarding.nowhere_to_go_back(state.step, self.run_dir)
        guard = self.guard
        state.lr_scale *= lr_factor
        guard.rollbacks += 1
        guard.bad_in_row = 0
        guard.events.append(
            {
                "step": state.step,
                "event": "rollback",
                "to": str(last or "current weights"),
                "lr_scale": state.lr_scale,
            }
        )
        console.print(
            f"[yellow]step {state.step}: {guard.cfg.max_bad} bad updates in a row: "
            f"{'rolled back to ' + str(last) if last else 'no checkpoint yet, weights kept'}; lr x{state.lr_scale:g}[/yellow]"
        )


def resume_hint(run_dir: Path) -> str:
    return f"Resume with the same command plus: out={run_dir} resume=auto"


def conclude(
    run: Checkpoints, cfg: StageConfig, tok, state: LoopState, n_params, report: dict, **facts
) -> None:
    """The end of a run that trained to its end (or its early stop): a run whose weights are not finite
    writes no final/; one that skipped too many updates writes it, then fails with why (guard.verdict)."""
    weights_ok = guarding.weights_finite(run.params, run.dist)
    failed = guarding.verdict(run.guard, state.step, weights_ok)  # None, or why this run is no success
    if not weights_ok:
        raise guarding.run_failed(failed, run.run_dir)  # no final/ from poisoned weights
    finish(run, cfg, tok, failed)
    write_report(run, cfg, state, n_params, report, **facts, failed=failed)
    if failed:
        raise guarding.run_failed(failed, run.run_dir)


def finish(run: Checkpoints, cfg: StageConfig, tok, failed: str | None = None) -> None:
    """final/ (the best checkpoint when early stopping kept one), merged/ when asked, the plots."""
    run_dir, dist, model = run.run_dir, run.dist, run.model
    best = run_dir / "best"
    if cfg.train.early_stop.patience and best.is_dir():
        if dist.is_main:
            shutil.rmtree(run_dir / "final", ignore_errors=True)
            os.replace(best, run_dir / "final")  # the best checkpoint becomes final/
        dist.barrier()
    else:
        with writing(f"the final model {run_dir / 'final'}", run_dir):
            save_final_everywhere(dist, model, tok, run_dir / "final", cfg)
    if dist.is_main:
        if cfg.merge and cfg.adapter in ("lora", "dora") and not dist.sharded:
            # a copy is merged: the trained model stays as it is
            save_final(copy.deepcopy(model).merge_and_unload(), tok, run_dir / "merged", cfg)
        make_plots(run_dir)
        if not cfg.train.keep_optimizer and not failed:  # a finished run keeps final/, not AdamW's moments
            ckpt.drop_optimizer_state(run.root)


def write_report(
    run: Checkpoints, cfg: StageConfig, state: LoopState, n_params, report: dict, **facts
) -> None:
    """report.md and the summary, from rank 0; `facts`: stage, unit, total_steps, stopped_early, stopped,
    failed. Every rank calls it: each rank's peak memory is gathered (a collective)."""
    peak_per_rank = run.dist.gather([round(peak_memory_mb())])
    if not run.dist.is_main:
        return
    guard = run.guard
    summary = {
        "unit": facts["unit"],
        "stage": facts["stage"],
        "total_steps": facts["total_steps"],
        "steps_done": state.step,
        "stopped_early": facts["stopped_early"],
        "stopped": facts["stopped"],  # plateau (early stopping) | time (train.max_seconds) | steps (the cap)
        "best": state.best,
        "best_step": state.best_step,
        "elapsed_s": state.elapsed_s,
        "tokens": state.tokens,
        "peak_memory_mb": peak_memory_mb(),
        "peak_rss_mb_per_rank": peak_per_rank,
        "guard": {"skipped": guard.skipped, "rollbacks": guard.rollbacks, "events": guard.events},
        **precision.current().record(),  # precision, precision_requested, precision_why
        "processes": run.dist.world,
        "distributed": run.dist.mode,
        "failed": facts["failed"],
        "history": resume_check.history_lines(run.run_dir),
    }
    write_summary(run.run_dir, cfg, summary, n_params, report)
