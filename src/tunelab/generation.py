"""Moved to `tunelab.models.generation`; this name stays only for callers not yet updated
(label/sample.py). Delete it once nothing imports `tunelab.generation`."""

from tunelab.models.generation import complete, generate  # noqa: F401
