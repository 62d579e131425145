"""What every preparation step shares: documents read one at a time, JSONL shards written one at a
time, a progress bar in MB with MB/s and ETA, and worker processes that never run far ahead.

Nothing here holds more than a few chunks of text at once, so memory stays flat as the input grows.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tunelab.data.read import RowError, normalise, records
from tunelab.errors import DataError, Problem, TunelabError

DATA_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".txt", ".txt.gz", ".md", ".json", ".parquet", ".csv")
T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class Doc:
    """One document of the input: where it came from, its text, and the row's other fields (kept)."""

    path: str
    line: int
    text: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def input_files(specs: list[str]) -> list[Path]:
    """Files named, or the data files in a folder (only its `part-*` shards when it is the output of
    another step, so its report.json is not read as data)."""
    files: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(DATA_SUFFIXES))
            shards = [f for f in found if f.name.startswith("part-")]
            files += shards or found
            if not found:
                raise TunelabError(f"{p} holds no data files ({', '.join(DATA_SUFFIXES)}).")
        elif p.exists():
            files.append(p)
        else:
            raise DataError([Problem(str(p), None, None, "does not exist")])
    if not files:
        raise TunelabError("no input files given.")
    return files


def read_docs(paths: Iterable[Path]) -> Iterator[Doc]:
    """Every row's `text`, in file order; a bad row stops here with its file, line and field.
    Empty texts are passed on (the steps count them)."""
    for path in paths:
        hint = f"run `tunelab data check {path} --kind text` to see every problem"
        for line, record in records(path):
            if isinstance(record, Problem):
                raise DataError([record], hint=hint)
            text = record.get("text")
            if not isinstance(text, str):
                try:
                    normalise("text", record)  # raises the standard message for this row
                except RowError as err:
                    raise DataError([Problem(str(path), line, err.field, err.message)], hint=hint) from None
            yield Doc(str(path), line, text, {k: v for k, v in record.items() if k != "text"})


def chunks(docs: Iterable[Doc], chunk_chars: int = 1 << 20) -> Iterator[list[Doc]]:
    """Documents grouped into chunks of about `chunk_chars` characters: the unit of work of a process."""
    chunk: list[Doc] = []
    size = 0
    for doc in docs:
        chunk.append(doc)
        size += len(doc.text)
        if size >= chunk_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def input_bytes(paths: Iterable[Path]) -> int:
    """Bytes of text to read, for the progress bar: gzipped files count about three times their size."""
    return sum(p.stat().st_size * (3 if p.suffix == ".gz" else 1) for p in paths)


def bounded_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> Iterator[R]:
    """`fn` over `items` in worker processes, results in input order.

    At most 2 x workers items are in flight (a plain `Pool.imap` reads its whole input ahead, which
    would hold the corpus in memory). One worker runs in this process: no start-up, easy to debug.
    Workers come from a fork server, so they never inherit this process's threads (the progress bar).
    """
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(fn, items)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=initializer, initargs=initargs) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class ShardWriter:
    """JSONL shards `part-00000.jsonl[.gz]` of about `shard_mb` MB each, written one line at a time."""

    def __init__(self, out: Path, compress: bool = False, shard_mb: float = 256):
        self.out, self.compress, self.limit = out, compress, int(shard_mb * 2**20)
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("part-*.jsonl*"):  # a rerun must not leave shards of the last run behind
            old.unlink()
        self.paths: list[Path] = []
        self.file = None
        self.size = 0
        self.bytes_written = 0

    def _next(self) -> None:
        if self.file is not None:
            self.file.close()
        path = self.out / f"part-{len(self.paths):05d}.jsonl{'.gz' if self.compress else ''}"
        self.paths.append(path)
        self.file = (
            gzip.open(path, "wt", encoding="utf-8", compresslevel=6)
            if self.compress
            else path.open("w", encoding="utf-8")
        )
        self.size = 0

    def write(self, line: str) -> None:
        """One JSON line, newline included."""
        if self.file is None or self.size >= self.limit:
            self._next()
        self.file.write(line)
        self.size += len(line)
        self.bytes_written += len(line)

    def close(self) -> list[Path]:
        if self.file is not None:
            self.file.close()
            self.file = None
        return self.paths


def json_line(text: str, fields: dict[str, Any]) -> str:
    return json.dumps({"text": text, **fields}, ensure_ascii=False) + "\n"


def write_report(
    out: Path, report: dict, files: list[Path], chars_in: int, seconds: float, config: dict
) -> dict:
    """`report` with what every step's report states (text read, time, speed, inputs, settings), written
    to out/report.json."""
    report.update(
        mb_in=chars_in / 1e6,  # text read (characters), whatever the file format or compression
        seconds=seconds,
        mb_per_s=chars_in / 1e6 / max(seconds, 1e-9),
        inputs=[str(f) for f in files],
        config=config,
    )
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return report


class Meter:
    """A progress bar in MB of input with MB/s and ETA (only on a terminal), and the totals at the end."""

    def __init__(self, label: str, total_bytes: int, console=None):
        from rich.console import Console

        from tunelab.console import progress_bar

        self.console = console or Console(stderr=True)
        self.label, self.total = label, max(total_bytes, 1)
        self.progress = progress_bar(self.console, "MB", "{task.fields[rate]}")
        self.done = 0
        self.start = time.perf_counter()

    def __enter__(self) -> Meter:
        self.progress.__enter__()
        self.task = self.progress.add_task(self.label, total=round(self.total / 1e6), rate="")
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def advance(self, nbytes: int) -> None:
        self.done = min(self.done + nbytes, self.total)
        rate = self.done / 1e6 / max(time.perf_counter() - self.start, 1e-9)
        self.progress.update(self.task, completed=round(self.done / 1e6), rate=f"{rate:.1f} MB/s")

    def seconds(self) -> float:
        return time.perf_counter() - self.start
