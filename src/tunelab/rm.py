"""Moved: the scorer to `tunelab.models.scorer`, select / best-of-n / rejection sampling to `tunelab.rank`.
This name stays only for callers not yet updated (label/sample.py, ladder/run.py). Delete it once
nothing imports `tunelab.rm`."""

from tunelab.models.scorer import RewardScorer, render_options_for, score  # noqa: F401
from tunelab.rank import best_of_n, select, write_rejection_sampling  # noqa: F401
