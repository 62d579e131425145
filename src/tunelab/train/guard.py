"""Divergence guard: models can diverge. A non-finite loss or gradient, or a loss spike, skips the update;
several in a row roll the run back to its last checkpoint with a lower learning rate."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

from tunelab.config.schema import GuardSection


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
