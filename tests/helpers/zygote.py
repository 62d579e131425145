"""A warm process that forks `tunelab` runs, so each starts in a fraction of a second instead of ~5 s.

`python -m tunelab` spends ~5 s importing torch, transformers and peft before it does anything. The
zygote imports them once and forks one child per run. It never computes, so no OpenMP thread pool
exists yet that a fork could leave broken. The children are real processes: SIGKILL, SIGTERM and
Ctrl-C reach them exactly as they reach a user's run.

    zygote = Zygote()
    child = zygote.start(["sft", "model=tiny:llama", ...], log=tmp / "log", env={"TUNELAB_...": "3"})
    child.pid               # send it signals
    child.wait(timeout=60)  # exit status; -9 for SIGKILL (as subprocess reports it)
    zygote.close()
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

PRELOAD = [  # what every run imports; transformers loads model code lazily, so name it
    "torch",
    "numpy",
    "safetensors.torch",
    "transformers",
    "transformers.models.llama.modeling_llama",
    "peft",
    "accelerate",
    "rich.progress",
    "torch.utils.tensorboard",
    "tunelab.cli",
    "tunelab.models.load",
    "tunelab.models.adapters",
    "tunelab.train.loop",
    "tunelab.stages.pretrain",
    "tunelab.stages.sft",
    "tunelab.stages.rm",
    "tunelab.stages.dpo",
    "tunelab.stages.rl",
]


@dataclass
class Child:
    pid: int
    _zygote: Zygote

    def wait(self, timeout: float | None = None) -> int:
        return self._zygote._read(timeout)["status"]


class Zygote:
    def __init__(self):
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            OMP_NUM_THREADS="1",  # tiny models: see the one_thread fixture in conftest.py
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from helpers.zygote import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: close() can end any child left running
        )

    def start(
        self,
        argv: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        kill_in_save: int | None = None,
        slow_steps: float = 0.0,
        cwd: Path | None = None,
        kill_at_step: int | None = None,
    ) -> Child:
        """Fork `tunelab ARGV` (output to `log`). `kill_in_save=N`: SIGKILL it halfway through writing
        checkpoint step-N (its weights file written, the rest not). `kill_at_step=N`: SIGKILL it right after
        optimizer step N. `slow_steps=S`: each optimizer step
        takes S seconds longer (time to send a second Ctrl-C while the first is being handled); the log
        gets the line SLOW_STEP as each wait begins."""
        request = {
            "argv": argv,
            "log": str(log),
            "env": env or {},
            "kill_in_save": kill_in_save,
            "slow_steps": slow_steps,
            "cwd": str(cwd) if cwd else None,
            "kill_at_step": kill_at_step,
        }
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        return Child(self._read()["pid"], self)

    def run(self, argv: list[str], log: Path, **kwargs) -> int:
        return self.start(argv, log, **kwargs).wait()

    def _read(self, timeout: float | None = None) -> dict:
        """The zygote's next answer line (read byte by byte, so that select() sees what is unread)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.proc.stdout], [], [], left)[0]:
                raise TimeoutError(f"no answer from the child within {timeout} s")
            byte = os.read(self.proc.stdout.fileno(), 1)
            if not byte:
                raise RuntimeError("the zygote process died")
            line += byte
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:  # a child still runs (a test failed before it ended)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def serve() -> None:
    """The zygote's loop: one JSON request per line on stdin; answers {pid} then {status}."""
    for name in PRELOAD:
        importlib.import_module(name)
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)  # never returns
        answers.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n")


def _child(request: dict) -> None:
    code = 99
    try:
        os.environ.update(request["env"])
        if request.get("cwd"):
            os.chdir(request["cwd"])
        log = open(request["log"], "w", buffering=1)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # the requests pipe belongs to the zygote
        if request["kill_in_save"]:
            _die_while_saving(request["kill_in_save"])
        if request["slow_steps"]:
            _slow_steps(request["slow_steps"])
        if request.get("kill_at_step"):
            from helpers.killed_run import kill_after

            kill_after(request["kill_at_step"])
        from tunelab.cli import main

        code = main(request["argv"])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        os._exit(code)


def _die_while_saving(step: int) -> None:
    from tunelab.train import checkpoint

    write = checkpoint.save_file

    def write_then_die(tensors, path, *args, **kwargs):
        write(tensors, path, *args, **kwargs)
        if Path(path).parent.name == f"step-{step}.tmp":
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.save_file = write_then_die


SLOW_STEP = "(test) this optimizer step now waits"


def _slow_steps(seconds: float) -> None:
    from tunelab.train import loop

    release = loop.release_freed_memory  # called once after every optimizer step

    def release_then_wait():
        release()
        print(SLOW_STEP, file=sys.stderr, flush=True)  # the test sees the child is inside a step's wait
        time.sleep(seconds)

    loop.release_freed_memory = release_then_wait
