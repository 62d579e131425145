"""Prompting strategies (tunelab.prompting.strategies) and the model interface they use (lm)."""
