"""Reinforcement learning pieces: rewards are plain callables, rollouts are a batch generator."""
