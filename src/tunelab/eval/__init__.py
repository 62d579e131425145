"""Evaluation: one harness for prompting strategies and trained models (see tunelab.eval.harness)."""
