"""Stand-in assessors: label a project through the real labelling server, so `tunelab label stats`
and `tunelab label export` have something to read before people have labelled anything.

    python examples/label/simulate.py examples/label/project.yaml
    tunelab label stats examples/label/project.yaml

It starts `tunelab label serve PROJECT` on a free loopback port and logs in with each assessor's token,
exactly as the page does. The first assessors prefer the answer that repeats more of the question's
words (a crude stand-in for "helpful"); the last one always clicks the left answer, so `label stats`
has a position-biased assessor to flag. Labels go into the project's database; running it again adds
nothing once every queue is done.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml


def _call(base: str, token: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        base + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _overlap(prompt: str, answer: str) -> int:
    words = set(re.findall(r"\w+", prompt.lower()))
    return len(words & set(re.findall(r"\w+", answer.lower())))


def _choose(showing: dict, biased: bool) -> str:
    if biased:
        return "left"
    left, right = (_overlap(showing["prompt"], showing[side]) for side in ("left", "right"))
    return "tie" if left == right else ("left" if left > right else "right")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(project_path: str) -> int:
    project = yaml.safe_load(Path(project_path).read_text(encoding="utf-8"))
    tokens = dict(project["assessors"])
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunelab",
            "label",
            "serve",
            project_path,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(300):  # the server plans the queues first: wait until it answers
            if server.poll() is not None:
                sys.exit(f"the labelling server stopped: {server.stderr.read()[-2000:]}")
            try:
                urllib.request.urlopen(base + "/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        names = list(tokens)
        for name in names:
            me = _call(base, tokens[name], "/api/me")
            reasons = {crit: spec["reasons"][0] for crit, spec in me["rulebook"]["criteria"].items()}
            labelled = 0
            while (showing := _call(base, tokens[name], "/api/next")["showing"]) is not None:
                choice = _choose(showing, biased=name == names[-1])
                _call(
                    base,
                    tokens[name],
                    "/api/labels",
                    {"assignment": showing["assignment"], "choice": choice, "reasons": reasons},
                )
                labelled += 1
            print(f"{name}: {labelled} labels")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "examples/label/project.yaml"))
