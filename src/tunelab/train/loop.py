"""THE training loop. Every stage hands it batches and `loss_fn(model, batch) -> (loss_sum, metrics)`.

    run_dir = train(model, tok, batches, loss_fn, cfg, stage="sft", eval_batches=held_out)

Conventions a stage follows:
- a batch has `n_targets`: the units its loss is summed over (target tokens, preference pairs ...);
- `loss_fn` returns the loss *summed* over those units, and metrics as sums too. The loop divides
  by the units of the whole global batch (all micro-batches of a step, all processes), so
  micro-batch 1 x accumulation 8 gives the same update as 8 x 1;
- `batches.epoch(e)` yields the micro-batches of epoch e in a fixed order (seeded), so a resumed run
  skips exactly the micro-batches it had consumed.

The loop owns the optimizer, schedule, clipping, the divergence guard, evaluation, early stopping,
logging, checkpoints and the run folder. Under torchrun / accelerate launch it runs on several
processes (train/dist.py): each rank takes its share of every global micro-batch (`batches.shard`),
numbers are summed over ranks, and only rank 0 writes logs, plots and reports.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from tunelab.config.schema import StageConfig
from tunelab.errors import TunelabError
from tunelab.models import precision
from tunelab.train import guard as guarding
from tunelab.train.dist import Dist, to_device
from tunelab.train.dist import setup as setup_dist
from tunelab.train.guard import Guard
from tunelab.train.lifecycle import Checkpoints, LoopState, conclude, resume_hint
from tunelab.train.log import MetricsLog
from tunelab.train.optim import build_optimizer, lr_at
from tunelab.train.process import Stop, release_all_freed_memory, release_freed_memory
from tunelab.train.report import count_params
from tunelab.train.run_folder import default_run_dir, how_to_go_on, save_final_everywhere, writing


class BatchSource(Protocol):
    micro_batches_per_epoch: int | None  # None when streaming and unknown

    def epoch(self, epoch: int, start: int = 0) -> Iterable[Any]: ...  # from the start-th micro-batch on

    def shard(self, dist: Dist) -> BatchSource: ...  # this rank's share of every global micro-batch

    # optional, for sources with state beyond the data position (RL): saved with each checkpoint
    # def state_dict(self) -> dict: ...
    # def load_state_dict(self, state: dict) -> None: ...


LossFn = Callable[[Any, Any], tuple[torch.Tensor, dict[str, float]]]


def total_steps(cfg: StageConfig, batches: BatchSource) -> int:
    if cfg.train.max_steps:
        return cfg.train.max_steps
    if not batches.micro_batches_per_epoch:
        raise ValueError("set train.max_steps: the number of batches per epoch is unknown for this data")
    return max(1, math.ceil(cfg.train.epochs * batches.micro_batches_per_epoch / cfg.train.grad_accum))


def _micro_batches(batches: BatchSource, state: LoopState) -> Iterator[Any]:
    """Endless micro-batches from the saved position, advancing `state.epoch/micro` as they are taken."""
    while True:
        produced = False
        for batch in batches.epoch(state.epoch, start=state.micro):
            produced = True
            state.micro += 1
            yield batch
        if not produced and state.micro == 0:
            raise ValueError("the training data produced no batches")
        state.epoch += 1
        state.micro = 0


@torch.no_grad()
def evaluate(model, loss_fn: LossFn, batches: list) -> dict[str, float]:
    """Loss and metrics per unit over held-out batches (every rank evaluates all of them: the same
    numbers everywhere, and the same forwards, which FSDP needs)."""
    was_training = model.training
    model.eval()
    total, units, sums = 0.0, 0, {}
    for batch in batches:
        with precision.compute():
            loss_sum, metrics = loss_fn(model, batch)
        total += float(loss_sum)
        units += batch.n_targets
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    model.train(was_training)
    units = max(units, 1)
    return {"eval_loss": total / units, **{f"eval_{k}": v / units for k, v in sums.items()}}


# called with the step number after every optimizer step, in every process (tests kill runs here)
AFTER_STEP: list[Callable[[int], None]] = []


def train(
    model,
    tok,
    batches: BatchSource,
    loss_fn: LossFn,
    cfg: StageConfig,
    *,
    stage: str,
    eval_batches: list | None = None,
    evaluators: list[Callable[[Any], dict[str, float]]] | None = None,
    report: dict | None = None,
    unit: str = "target tokens",
) -> Path:
    """Train `model` and return the run folder (see DESIGN.md for its layout).

    `evaluators` are called with the model every train.eval_every steps; the metrics they return
    (named eval_*) are logged and can drive early stopping like eval_loss. Every forward (training,
    evaluation, sampling) computes in train.precision (models/precision.py).
    """
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(stage)
    run_dir.mkdir(parents=True, exist_ok=True)
    dist = setup_dist(cfg)
    with precision.using(precision.resolve(cfg.train.precision, dist.device.type)):
        facts = {"eval_batches": eval_batches, "evaluators": evaluators, "report": report, "unit": unit}
        return _train(model, tok, batches, loss_fn, cfg, dist, run_dir, stage=stage, **facts)


def _train(
    model, tok, batches, loss_fn, cfg, dist, run_dir, *, stage, eval_batches, evaluators, report, unit
):
    from rich.console import Console

    tc = cfg.train
    console = Console(stderr=True, quiet=not dist.is_main)  # one voice: rank 0
    if dist.world > 1:
        if not hasattr(batches, "shard"):
            raise TypeError(f"{type(batches).__name__} cannot be shared out between processes (no shard())")
        batches = batches.shard(dist)
    torch.manual_seed(cfg.seed)
    n_params = count_params(model)  # before FSDP leaves each rank a shard

    model, optimizer = dist.wrap(model, lambda m: build_optimizer(m, tc))
    unwrapped = dist.unwrap(model)
    params = [p for p in unwrapped.parameters() if p.requires_grad]
    total = total_steps(cfg, batches)
    guard = Guard(tc.guard)
    undo = guarding.StepUndo(params, optimizer, enabled=dist.mode != "deepspeed")
    scaler = torch.amp.GradScaler(dist.device.type) if precision.current().name == "fp16" else None
    run = Checkpoints(run_dir, unwrapped, optimizer, dist, batches, guard, tc.keep_last, params, scaler)
    state = run.resume(cfg, stage, total, console)
    if run.nothing_to_do:
        return run_dir
    log = MetricsLog(run_dir, resume_step=state.step) if dist.is_main else None
    if eval_batches and dist.device.type != "cpu":
        eval_batches = [to_device(b, dist.device) for b in eval_batches]
    source = _micro_batches(batches, state)
    model.train()

    progress = _progress(console, total, state.step)
    started = time.monotonic() - state.elapsed_s
    stopped_early = out_of_time = False
    with Stop() as stop, progress:
        task = progress.add_task(stage, total=total, completed=state.step, loss=float("nan"), tps=0.0)
        while state.step < total:
            t0 = time.perf_counter()
            micro = _take(source, tc.grad_accum, dist, run_dir, state)
            row = _step(
                model, optimizer, params, micro, loss_fn, state, total, tc, dist, guard, undo, console, scaler
            )
            if row["skipped"] and guard.must_roll_back:
                run.roll_back(state, tc.guard.lr_factor, console)
            dt = time.perf_counter() - t0
            state.elapsed_s = time.monotonic() - started
            row["epoch"] = state.epoch + state.micro / max(1, batches.micro_batches_per_epoch or 1)
            row["tokens_per_s"] = row["units"] / dt
            row.update(dist.mean_dict(_batch_stats(micro)), step_s=dt)
            out_of_time = bool(tc.max_seconds and state.elapsed_s >= tc.max_seconds)
            due_eval = bool(eval_batches or evaluators) and (
                bool(tc.eval_every and state.step % tc.eval_every == 0) or state.step == total or out_of_time
            )
            if due_eval:
                row.update(_eval_metrics(model, unwrapped, loss_fn, eval_batches, evaluators))
                stopped_early = _early_stopping(row, state, cfg, unwrapped, tok, run_dir, console, dist)
                # an evaluator may end the run (the RL hacking watch: alerts.on_hacking stop | rollback)
                stopped_early |= any(getattr(e, "stop_requested", False) for e in evaluators or [])
            del row["units"]
            if dist.is_main and (state.step % tc.log_every == 0 or due_eval or state.step == total):
                log.write(row)
            progress.update(task, completed=state.step, loss=row["loss"], tps=row["tokens_per_s"])
            if tc.save_every and state.step % tc.save_every == 0 and state.step < total:
                run.save(state, console)
            for hook in AFTER_STEP:
                hook(state.step)
            stop.requested = dist.any(stop.requested)  # a signal to one rank stops them all at this step
            if stop.requested or stopped_early or out_of_time:
                break
    release_all_freed_memory()
    run.save(state, console)
    if log is not None:
        log.close()
    if stop.requested and state.step < total:
        console.print(
            f"[bold]stopped at step {state.step}/{total}; checkpoint saved.[/bold] {resume_hint(run_dir)}"
        )
        return run_dir
    stopped = "plateau" if stopped_early else "time" if out_of_time and state.step < total else "steps"
    facts = {"stage": stage, "unit": unit, "total_steps": total, "stopped_early": stopped_early}
    conclude(run, cfg, tok, state, n_params, report or {}, **facts, stopped=stopped)
    console.out(f"done: {run_dir}  (final model in {run_dir / 'final'}, report in {run_dir / 'report.md'})")
    return run_dir


def _step(
    model, optimizer, params, micro, loss_fn, state, total, tc, dist, guard, undo, console, scaler
) -> dict:
    """One optimizer step over the step's micro-batches: the mean loss over the global batch's units,
    its gradient clipped, applied unless the guard refuses it. Returns the step's metrics row.
    Forwards run in the precision in use; with fp16 a gradient scaler scales the loss, and an
    overflowed step is skipped (the scale halves) without counting against the guard."""
    (units,) = dist.sum([float(sum(b.n_targets for b in micro))])  # the global batch's units
    lr = lr_at(state.step, total, tc) * state.lr_scale
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_total, metric_sums = 0.0, {}
    for i, batch in enumerate(micro):
        with dist.no_sync(model, sync=i == len(micro) - 1):
            with precision.compute():
                loss_sum, metrics = loss_fn(model, batch)
            # / units: the mean over the global batch; x processes: DDP and FSDP average over ranks
            scaled = loss_sum.float() * (dist.world / max(units, 1.0))
            dist.backward(scaler.scale(scaled) if scaler else scaled)
        loss_total += float(loss_sum.detach())
        for k, v in metrics.items():
            metric_sums[k] = metric_sums.get(k, 0.0) + float(v)
    keys = sorted(metric_sums)
    loss_total, *sums = dist.sum([loss_total, *(metric_sums[k] for k in keys)])
    metric_sums = dict(zip(keys, sums))
    n_units = max(units, 1.0)
    loss = loss_total / n_units
    max_norm = tc.max_grad_norm if tc.max_grad_norm else float("inf")
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = dist.clip_grad_norm(params, max_norm)
    overflow = scaler is not None and not math.isfinite(grad_norm)
    reason = (
        f"fp16 overflow (loss scale now {scaler.get_scale() / 2:g})"
        if overflow
        else guard.check(loss, grad_norm)
    )
    if reason is None:
        reason = guarding.guarded_step(optimizer, undo, guard, dist)  # undone if it poisons a weight
    if reason is not None:
        guard.events.append({"step": state.step + 1, "event": "skipped", "reason": reason})
        console.print(f"[yellow]step {state.step + 1}: update skipped ({reason})[/yellow]")
    if scaler:
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    release_freed_memory()
    state.step += 1
    state.tokens += int(units)
    return {
        "step": state.step,
        "epoch": 0.0,  # set by the caller, which knows the source's length
        "loss": loss,
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens_per_s": 0.0,  # set by the caller, which times the whole step
        "tokens": state.tokens,
        "skipped": int(reason is not None),
        **{k: v / n_units for k, v in metric_sums.items()},
        "units": units,
    }


def _take(source: Iterator, n: int, dist: Dist, run_dir: Path, state: LoopState) -> list:
    """The step's `n` micro-batches. A user error while making them (a reward function that fails, a
    bad row met while streaming) says at which step it came and how to go on from there."""
    try:
        return [to_device(next(source), dist.device) for _ in range(n)]
    except TunelabError as err:
        err.args = (f"{err}\nThis happened at step {state.step + 1}. {how_to_go_on(run_dir, 'fix it')}",)
        raise


def _batch_stats(micro: list) -> dict[str, float]:
    """Statistics a batch carries already averaged (RL rollouts: reward, KL, timings), averaged over micro-batches."""
    seen: dict[str, list[float]] = {}
    for batch in micro:
        for k, v in getattr(batch, "stats", {}).items():
            seen.setdefault(k, []).append(float(v))
    return {k: sum(v) / len(v) for k, v in seen.items()}


def _eval_metrics(model, unwrapped, loss_fn, eval_batches, evaluators) -> dict[str, float]:
    """eval_loss (and the loss function's metrics) on the held-out batches, plus every evaluator's."""
    row = evaluate(model, loss_fn, eval_batches) if eval_batches else {}
    for evaluator in evaluators or []:  # e.g. the mean reward of sampled answers
        row.update(evaluator(unwrapped))
    model.train()
    return row


def _early_stopping(row, state, cfg, model, tok, run_dir, console, dist) -> bool:
    """Track the watched metric; save the best model; True when patience has run out."""
    es = cfg.train.early_stop
    value = row.get(es.metric)
    if value is None or not es.patience:
        return False
    better = state.best is None or (value < state.best if es.mode == "min" else value > state.best)
    if better:
        state.best, state.best_step, state.evals_without_gain = value, state.step, 0
        with writing(f"the best model so far {run_dir / 'best'}", run_dir):
            save_final_everywhere(dist, model, tok, run_dir / "best", cfg)
        return False
    state.evals_without_gain += 1
    if state.evals_without_gain >= es.patience:
        console.print(
            f"early stop at step {state.step}: {es.metric} has not improved for {es.patience} evaluations "
            f"(best {state.best:.4g} at step {state.best_step})"
        )
        return True
    return False


def _progress(console, total: int, done: int):
    from tunelab.console import progress_bar

    return progress_bar(console, "loss {task.fields[loss]:.4f}", "{task.fields[tps]:.0f} tok/s")
