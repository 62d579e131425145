"""Reward functions the RL tests load by name (`reward=helpers.toy_rewards:digits`)."""


def digits(example, completion):
    """Trivially learnable: the share of characters that are digits."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def broken(example, completion):
    raise ValueError("this reward function is broken")
