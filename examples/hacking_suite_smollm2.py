"""By hand: the hacking watch's suite on SmolLM2-135M (sums; held-out measure: the sum is right).

    nice -n 10 python examples/hacking_suite_smollm2.py [--seeds 2] [--steps 40]

About 25 s a GRPO step on a CPU of this project's kind, so 5 rewards x 2 seeds x 40 steps take hours;
the tiny suite (`python -m tunelab.rl.hacking_suite`) is what the tests run. Results: runs/hacking-suite-smollm2/suite.json.
"""

import sys

from tunelab.rl.hacking_suite import main

if __name__ == "__main__":
    args = sys.argv[1:]
    defaults = ["--preset", "smollm2", "--seeds", "2", "--steps", "40", "--eval-every", "4"]
    sys.exit(main(defaults + ["--out", "runs/hacking-suite-smollm2"] + args))
