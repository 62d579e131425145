"""Test helpers for the labelling service: a project on disk, and the real server in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

ADMIN = "admin-token-0123456789"


def token(name: str) -> str:
    return f"{name}-token-0123456789"


def write_project(
    folder: Path, pairs: list[dict], assessors: list[str], honeypots: list[dict] | None = None, **options
) -> Path:
    """project.yaml + pairs.jsonl (+ honeypots.jsonl) in `folder`; options are top-level keys."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    cfg = {
        "name": "test project",
        "pairs": "pairs.jsonl",
        "db": "label.db",
        "admin_token": ADMIN,
        "assessors": {a: token(a) for a in assessors},
        **options,
    }
    if honeypots:
        (folder / "honeypots.jsonl").write_text("".join(json.dumps(r) + "\n" for r in honeypots))
        cfg["honeypots"] = "honeypots.jsonl"
    (folder / "project.yaml").write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    return folder / "project.yaml"


def two_answer_pairs(n: int) -> list[dict]:
    return [
        {
            "prompt": f"question {i}?",
            "answers": [{"system": "x", "text": f"x says {i}"}, {"system": "y", "text": f"y says {i}"}],
        }
        for i in range(n)
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(project: Path, port: int) -> subprocess.Popen:
    """`tunelab label serve` on loopback, returned once it answers (the process, to kill or stop)."""
    log = open(project.parent / f"server-{port}.log", "a")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunelab",
            "label",
            "serve",
            str(project),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(project.parent / f'server-{port}.log').read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start within 60 s")


@contextmanager
def running_server(project: Path):
    port = free_port()
    proc = start_server(project, port)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
