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


# Scripted signals for the hacking watch (tests reset the counters): a reward that rises with every
# completion scored, and a held-out measure that follows HELD_SCRIPT, one value per evaluation of
# HELD_PROMPTS prompts.
REWARD_CALLS = 0
HELD_CALLS = 0
HELD_PROMPTS = 2
HELD_SCRIPT = [0.2, 0.4, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, 0.0]


def rising(example, completion):
    global REWARD_CALLS
    REWARD_CALLS += 1
    return REWARD_CALLS / 1000


def scripted_heldout(example, completion):
    global HELD_CALLS
    HELD_CALLS += 1
    return HELD_SCRIPT[min((HELD_CALLS - 1) // HELD_PROMPTS, len(HELD_SCRIPT) - 1)]
