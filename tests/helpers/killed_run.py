"""`tunelab ARGS...` SIGKILLed right after optimizer step STEP, for crash tests run by a launcher:

    torchrun --nproc_per_node 2 tests/helpers/killed_run.py STEP sft model=tiny:llama ...

The kill is a callback on the loop's `AFTER_STEP` hooks: production code holds no test switch.
"""

import os
import signal
import sys


def kill_after(step: int) -> None:
    from tunelab.train import loop

    loop.AFTER_STEP.append(lambda done: done == step and os.kill(os.getpid(), signal.SIGKILL))


if __name__ == "__main__":
    from tunelab.cli import main

    kill_after(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
