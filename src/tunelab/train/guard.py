"""Divergence guard: models can diverge. A non-finite loss or gradient, or a loss spike, skips the update;
an update that makes any trainable weight non-finite is undone (`guarded_step`) and counted the same
way; several in a row roll the run back to its newest verified checkpoint with a lower learning rate.
Poisoned weights are never written (checkpoints, final/), and `verdict` fails a run that skipped more
than guard.max_skipped_share of its updates or ends with non-finite weights."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

import torch

from tunelab.config.schema import GuardSection
from tunelab.errors import TunelabError

POISONED = "the update made trainable weights non-finite"
# an exact undo keeps a copy of the trainable weights and their optimizer state from before each step;
# above this many trainable values (full fine-tuning of a real model) the copy would cost too much
# memory, and a poisoned step goes back to the newest verified checkpoint instead
UNDO_MAX_VALUES = 50_000_000


@dataclass
class Guard:
    cfg: GuardSection
    recent: list[float] = field(default_factory=list)  # accepted losses, newest last
    bad_in_row: int = 0
    skipped: int = 0
    rollbacks: int = 0
    events: list[dict] = field(default_factory=list)

    def check(self, loss: float, grad_norm: float) -> str | None:
        """Why this update must be skipped, or None when it is fine (then the loss is remembered)."""
        if not math.isfinite(loss):
            reason = "non-finite loss"
        elif not math.isfinite(grad_norm):
            reason = "non-finite gradient"
        elif len(self.recent) >= 5 and loss > max(
            self.cfg.spike * statistics.median(self.recent),
            statistics.median(self.recent) + self.cfg.min_jump,
        ):
            reason = (
                f"loss spike ({loss:.3g} > {self.cfg.spike} x median {statistics.median(self.recent):.3g})"
            )
        else:
            self.recent = (self.recent + [loss])[-self.cfg.window :]
            self.bad_in_row = 0
            return None
        self.bad_in_row += 1
        self.skipped += 1
        return reason

    def count(self, reason: str) -> str:
        """Count an update that was undone after the fact (its loss is not remembered)."""
        self.bad_in_row += 1
        self.skipped += 1
        return reason

    @property
    def must_roll_back(self) -> bool:
        return self.bad_in_row >= self.cfg.max_bad

    def state_dict(self) -> dict:
        state = asdict(self)
        state.pop("cfg")
        return state

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def weights_finite(params: list[torch.Tensor], dist=None) -> bool:
    """Every trainable weight finite, on every rank (one fused check per tensor, no host sync per tensor)."""
    with torch.no_grad():
        bad = sum((~torch.isfinite(_local(p))).sum() for p in params) if params else torch.tensor(0)
    ok = int(bad) == 0
    return ok if dist is None else not dist.any(not ok)


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "to_local") else p  # a DTensor (FSDP): this rank's shard


class StepUndo:
    """A copy of what one optimizer step changes (trainable weights, their optimizer state), to undo a
    step that poisoned the weights; off when that copy would be too large (see UNDO_MAX_VALUES)."""

    def __init__(self, params: list[torch.Tensor], optimizer, enabled: bool = True):
        self.params, self.optimizer = params, optimizer
        self.enabled = enabled and sum(_local(p).numel() for p in params) <= UNDO_MAX_VALUES
        self._weights: list[torch.Tensor] = []
        self._state: dict = {}

    def take(self) -> None:
        if not self.enabled:
            return
        with torch.no_grad():
            self._weights = [_local(p).detach().clone() for p in self.params]
        self._state = {
            p: {k: v.clone() if torch.is_tensor(v) else v for k, v in self.optimizer.state[p].items()}
            for p in self.params
            if p in self.optimizer.state
        }

    def restore(self) -> bool:
        """Put the weights and optimizer state back as they were before the step; False when off."""
        if not self.enabled:
            return False
        with torch.no_grad():
            for p, saved in zip(self.params, self._weights):
                _local(p).copy_(saved)
        for p in self.params:
            if p in self._state:
                self.optimizer.state[p] = self._state[p]
            else:
                self.optimizer.state.pop(p, None)
        return True


def guarded_step(optimizer, undo: StepUndo, guard: Guard, dist=None) -> str | None:
    """optimizer.step(), undone when it made a trainable weight non-finite: returns why, or None.
    When it cannot be undone, the guard is told to roll back at once (the weights cannot be used)."""
    undo.take()
    optimizer.step()
    if weights_finite(undo.params, dist):
        return None
    guard.count(POISONED)
    if not undo.restore():
        guard.bad_in_row = max(guard.bad_in_row, guard.cfg.max_bad)
        return POISONED + " (too large to undo in memory: rolling back)"
    return POISONED + " (undone)"


def verdict(guard: Guard, steps: int, weights_ok: bool) -> str | None:
    """Why a finished run must not count as a success, or None. Says what happened and what to change."""
    if not weights_ok:
        return (
            "training ended with non-finite trainable weights, so no final model was written. Lower "
            "train.lr, keep clipping on (train.max_grad_norm), or use train.precision=fp32."
        )
    share = guard.skipped / max(steps, 1)
    if share > guard.cfg.max_skipped_share:
        return (
            f"{guard.skipped} of {steps} updates were skipped by the divergence guard ({share:.0%}, over "
            f"train.guard.max_skipped_share={guard.cfg.max_skipped_share:g}), so the model barely trained; "
            "the reasons are in report.md. Lower train.lr, check the data for broken rows, or raise "
            "train.guard.spike if the loss is merely noisy."
        )
    return None


def nowhere_to_go_back(step: int, run_dir) -> TunelabError:
    return run_failed(
        f"At step {step} the weights became non-finite and there is no checkpoint to go back to. Lower "
        "train.lr, keep clipping on (train.max_grad_norm), or set train.save_every.",
        run_dir,
    )


def run_failed(message: str, run_dir) -> TunelabError:
    return TunelabError(f"{message} The run folder {run_dir} keeps the log and report.")
