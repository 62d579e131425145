"""Reward functions the RL tests load by name (`reward=helpers.toy_rewards:digits`)."""


def digits(example, completion):
    """Trivially learnable: the share of characters that are digits."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def broken(example, completion):
    raise ValueError("this reward function is broken")


CALLS = 0  # completions scored by `faulty` in this process (tests reset it)


def faulty(example, completion):
    """`digits`, until the TOY_REWARD_FAULT-th completion (e.g. "nan@17"): from then on NaN, inf, or it raises."""
    import os

    global CALLS
    CALLS += 1
    kind, _, at = os.environ.get("TOY_REWARD_FAULT", "none@0").partition("@")
    if kind != "none" and CALLS >= int(at):
        if kind == "raises":
            raise RuntimeError("the scoring service is down")
        return float(kind)  # "nan" or "inf"
    return digits(example, completion)
