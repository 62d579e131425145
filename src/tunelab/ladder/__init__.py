"""The ladder: every way of using a model on one task, compared on quality and cost (see run.py)."""
