"""Read data files into rows of one of the kinds of DESIGN.md, checking every row.

    rows = read_dataset("train.jsonl", kind="pairs")      # raises DataError listing what is wrong
    rows, problems = check_dataset("train.jsonl", "pairs")  # every problem, for `tunelab data check`

Formats: JSONL (.jsonl/.ndjson), JSON (a list of objects), Parquet, CSV, plain text (.txt/.md: documents
separated by blank lines, kind `text` only), or a hub dataset name
(only when online). JSONL and CSV are parsed here rather than by `datasets` so that a problem can be
reported with its exact line; Parquet is streamed by row group with pyarrow.
Accepted aliases are normalised: `input`/`output` and alpaca `instruction`/`input`/`output` become
`prompt`/`completion`; sharegpt `conversations` with `from`/`value` become `messages`.

Nothing in a file can crash a reader: special files (a FIFO, /dev/zero, a folder), unreadable files,
JSON nested deeper than MAX_DEPTH, integers of thousands of digits, text that is not valid Unicode (a
lone surrogate escaped in JSON) all become the usual `file:line: field: what is wrong` problem.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import stat
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tunelab.errors import DataError, Problem, TunelabError

Row = dict[str, Any]
ROLES = {"system", "user", "assistant", "tool"}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
    "function_call": "assistant",
    "observation": "tool",
}
WINNERS = {"model_a", "model_b", "tie", "tie (bothbad)"}
MAX_DEPTH = 64  # nesting of lists and objects in one row: a chat is 3 deep, a deep row is an attack


class RowError(Exception):
    """One field of one row is wrong; turned into a Problem with the file and line."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


# ---------------------------------------------------------------- field helpers


def _what(value: Any) -> str:
    """A value's type as the message says it: its Python name, but JSON's `null` for None."""
    return "null" if value is None else type(value).__name__


def _text(row: Row, field: str, *, allow_empty: bool = False) -> str:
    if field not in row:
        raise RowError(field, f"missing (expected text); the row has {sorted(row) or 'no fields'}")
    value = row[field]
    if value is None:
        raise RowError(field, "is null (expected text)")
    if not isinstance(value, str):
        raise RowError(field, f"expected text, got {_what(value)} ({_short(value)})")
    if not allow_empty and not value.strip():
        raise RowError(field, "is empty")
    return value


def _number(row: Row, field: str, default: float, *, min_value: float | None = None) -> float:
    value = row.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowError(field, f"expected a number, got {_what(value)} ({_short(value)})")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        finite = False
    if not finite:  # JSON readers accept NaN and Infinity; a loss would not survive them
        raise RowError(field, f"expected a finite number, got {_short(value)}")
    if min_value is not None and value < min_value:
        raise RowError(field, f"must be >= {min_value}, got {value}")
    return float(value)


def _short(value: Any, limit: int = 40) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    try:
        text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    except (ValueError, RecursionError):
        text = f"<{_what(value)}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_flaw(value: Any, where: str | None = None, depth: int = 0) -> tuple[str | None, str] | None:
    """(field, what is wrong) for the first thing in a loaded row no reader downstream could use: text
    that is not valid Unicode (a lone surrogate), nesting deeper than MAX_DEPTH; None when all is well."""
    if depth > MAX_DEPTH:
        return where, f"is nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                bad = value[exc.start]
                return where, f"holds {ascii(bad)}, a lone surrogate, which is not a character; fix the text"
        return None
    if isinstance(value, dict):
        children = [(k, f"{where}.{k}" if where else str(k), v) for k, v in value.items()]
    elif isinstance(value, list):
        children = [(None, f"{where or ''}[{i}]", v) for i, v in enumerate(value)]
    else:
        return None
    for key, path, item in children:
        found = _first_flaw(key, where, depth + 1) if isinstance(key, str) else None
        found = found or _first_flaw(item, path, depth + 1)
        if found:
            return found
    return None


def _messages(value: Any, field: str) -> list[dict[str, str]]:
    """Validate a list of {role, content} (or sharegpt {from, value}) turns."""
    if isinstance(value, str):  # CSV cells hold chats as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError(field, "expected a list of {role, content} turns, got text") from None
    if not isinstance(value, list) or not value:
        raise RowError(field, f"expected a non-empty list of {{role, content}} turns, got {_short(value)}")
    turns = []
    for i, turn in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise RowError(where, f"expected {{role, content}}, got {_what(turn)}")
        if "from" in turn and "role" not in turn:  # sharegpt
            role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
            if role is None:
                raise RowError(
                    f"{where}.from",
                    f"unknown speaker {turn['from']!r}; expected one of {sorted(SHAREGPT_ROLES)}",
                )
            content = turn.get("value")
        else:
            role, content = turn.get("role"), turn.get("content")
            if role not in ROLES:
                raise RowError(f"{where}.role", f"expected one of {sorted(ROLES)}, got {_short(role)}")
        if not isinstance(content, str):
            raise RowError(f"{where}.content", f"expected text, got {_what(content)}")
        turns.append({"role": role, "content": content})
    _check_turn_order(turns, field)
    return turns


def _check_turn_order(turns: list[dict[str, str]], field: str) -> None:
    """A system turn only first; user and assistant turns alternate (tool results may follow each other).
    Many chat templates raise on anything else, and ChatML would silently train on a garbled dialogue."""
    for i, turn in enumerate(turns):
        role, before = turn["role"], turns[i - 1]["role"] if i else None
        if role == "system" and i:
            raise RowError(f"{field}[{i}].role", "'system' is allowed only as the first turn")
        if role == before and role in ("user", "assistant"):
            raise RowError(
                f"{field}[{i}].role", f"'{role}' follows '{before}'; user and assistant turns alternate"
            )


def _prompt_or_chat(row: Row, field: str) -> str | list[dict[str, str]]:
    value = row.get(field)
    if isinstance(value, list):
        return _messages(value, field)
    return _text(row, field)


# ---------------------------------------------------------------- one function per kind


def _text_kind(row: Row) -> Row:
    return {"text": _text(row, "text")}


def _pairs_kind(row: Row) -> Row:
    if "instruction" in row:  # alpaca: instruction + optional input -> prompt
        prompt = _text(row, "instruction")
        extra = row.get("input")
        if extra not in (None, ""):
            prompt = f"{prompt}\n\n{_text(row, 'input')}"
        completion = _text(row, "output")
    elif "prompt" in row or "completion" in row:
        prompt, completion = _text(row, "prompt"), _text(row, "completion")
    elif "input" in row or "output" in row:
        prompt, completion = _text(row, "input"), _text(row, "output")
    else:
        raise RowError(
            "prompt",
            f"missing: a pair needs prompt + completion (or input + output); the row has {sorted(row)}",
        )
    out: Row = {"prompt": prompt, "completion": completion}
    if row.get("system") is not None:
        out["system"] = _text(row, "system")
    return out


def _chat_kind(row: Row) -> Row:
    field = "messages" if "messages" in row or "conversations" not in row else "conversations"
    if field not in row:
        raise RowError(
            "messages", f"missing (expected a list of {{role, content}} turns); the row has {sorted(row)}"
        )
    messages = _messages(row[field], field)
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError(field, "has no assistant turn, so there is nothing to learn")
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and not m["content"].strip():
            raise RowError(f"{field}[{i}].content", "assistant turn is empty")
    return {"messages": messages}


def _preference_kind(row: Row) -> Row:
    out: Row = {
        "prompt": _prompt_or_chat(row, "prompt") if row.get("prompt") not in (None, "") else "",
        "chosen": _prompt_or_chat(row, "chosen"),
        "rejected": _prompt_or_chat(row, "rejected"),
        "margin": _number(row, "margin", 0.0),
        "weight": _number(row, "weight", 1.0, min_value=0.0),
    }
    if out["chosen"] == out["rejected"]:
        raise RowError("rejected", "is the same as chosen, so the pair teaches nothing")
    return out


def _prompts_kind(row: Row) -> Row:
    out: Row = {"prompt": _prompt_or_chat(row, "prompt")}
    for field in ("answer", "reference"):
        if row.get(field) is not None:
            out[field] = row[field]
    return out


def _judgments_kind(row: Row) -> Row:
    out = {"model_a": _text(row, "model_a"), "model_b": _text(row, "model_b"), "winner": _text(row, "winner")}
    if out["winner"] not in WINNERS:
        raise RowError("winner", f"expected one of {sorted(WINNERS)}, got {out['winner']!r}")
    if out["model_a"] == out["model_b"]:
        raise RowError("model_b", "is the same as model_a; a system compared with itself says nothing")
    for field in ("judge", "prompt"):
        if row.get(field) is not None:
            out[field] = row[field]
    return out


KINDS: dict[str, Callable[[Row], Row]] = {
    "text": _text_kind,
    "pairs": _pairs_kind,
    "chat": _chat_kind,
    "preference": _preference_kind,
    "prompts": _prompts_kind,
    "judgments": _judgments_kind,
}


def normalise(kind: str, row: Row) -> Row:
    """Validate one row and return it in the kind's canonical fields (raises RowError)."""
    return KINDS[check_kind(kind)](row)


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise TunelabError(f"Unknown data kind '{kind}'. Choose one of: {', '.join(KINDS)}.")
    return kind


# ---------------------------------------------------------------- files -> raw records

Record = tuple[int, "Row | Problem"]


def _open(path: Path):
    """Binary file object; `.gz` files (e.g. `part-00000.jsonl.gz` from `tunelab data clean`) are unzipped."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _jsonl_records(path: Path) -> Iterator[Record]:
    def bad_line(message: str) -> Record:  # the whole line is unreadable: no field to name
        return lineno, Problem(str(path), lineno, None, message)

    with _open(path) as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                byte = raw[exc.start : exc.start + 1]
                yield bad_line(f"is not UTF-8 (byte {exc.start}: {byte!r}); re-save the file as UTF-8")
                continue
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark, as Windows editors write
            if not line.strip():
                continue
            try:
                value = json.loads(line, object_pairs_hook=_no_duplicate_keys)
            except json.JSONDecodeError as exc:
                yield bad_line(f"is not valid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})")
                continue
            except RowError as err:
                yield lineno, Problem(str(path), lineno, err.field, err.message)
                continue
            except (RecursionError, ValueError) as exc:  # too deep; an integer of over 4,300 digits
                yield lineno, Problem(str(path), lineno, None, _unloadable(exc))
                continue
            if not isinstance(value, dict):
                yield (
                    lineno,
                    Problem(str(path), lineno, None, f"expected a JSON object, got {_what(value)}"),
                )
                continue
            yield lineno, value


def _unloadable(exc: Exception) -> str:
    """What json.loads could not take, for a row that is valid JSON in principle."""
    if isinstance(exc, RecursionError):
        return f"is nested too deeply to read (a row is at most {MAX_DEPTH} levels deep)"
    return "holds a number with thousands of digits, which no field takes"


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads keeps the last of two equal keys, silently: a row written twice over is an error."""
    row: dict[str, Any] = {}
    for key, value in pairs:
        if key in row:
            raise RowError(key, "appears twice in this object; which one is meant?")
        row[key] = value
    return row


def _json_records(path: Path) -> Iterator[Record]:
    try:
        value = json.loads(path.read_bytes().decode("utf-8-sig"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError as exc:
        yield (
            0,
            Problem(str(path), None, None, f"is not UTF-8 (at byte {exc.start}); re-save the file as UTF-8"),
        )
        return
    except json.JSONDecodeError as exc:
        yield (
            0,
            Problem(
                str(path),
                exc.lineno,
                None,
                f"is not valid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno}); for one object per line use .jsonl",
            ),
        )
        return
    except RowError as err:  # a duplicate key; the whole file is one JSON value, so no line is known
        yield 0, Problem(str(path), None, err.field, err.message)
        return
    except (RecursionError, ValueError) as exc:
        yield 0, Problem(str(path), None, None, _unloadable(exc))
        return
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list):
        value = next(iter(value.values()))  # {"data": [...]}
    if not isinstance(value, list):
        yield 0, Problem(str(path), None, None, "expected a JSON list of row objects")
        return
    for i, item in enumerate(value, 1):
        yield (
            i,
            item
            if isinstance(item, dict)
            else Problem(str(path), i, None, f"row {i} is {_what(item)}, expected an object"),
        )


def _csv_records(path: Path) -> Iterator[Record]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        yield line, Problem(str(path), line, None, "is not UTF-8; re-save the file as UTF-8")
        return
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            yield reader.line_num, {k: (v if v != "" else None) for k, v in row.items() if k is not None}
    except csv.Error as exc:  # a NUL byte, a field over the size limit
        yield reader.line_num, Problem(str(path), reader.line_num, None, f"is not valid CSV ({exc})")


def _parquet_records(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        yield 0, Problem(str(path), None, None, f"is not a readable Parquet file ({exc})")
        return
    n = 0
    for batch in pf.iter_batches(batch_size=1024):  # streams: one row group slice at a time
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _txt_records(path: Path) -> Iterator[Record]:
    """Plain text: documents separated by blank lines, streamed; the number is the document's first line."""
    lines: list[str] = []
    start = 1
    with _open(path) as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield lineno, Problem(str(path), lineno, None, "is not UTF-8; re-save the file as UTF-8")
                continue
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark
            if line.strip():
                if not lines:
                    start = lineno
                lines.append(line)
            elif lines:
                yield start, {"text": "".join(lines).strip()}
                lines = []
    if lines:
        yield start, {"text": "".join(lines).strip()}


def _hub_records(name: str) -> Iterator[Record]:
    if os.environ.get("HF_HUB_OFFLINE", "1") == "1" and os.environ.get("TUNELAB_ONLINE") != "1":
        raise DataError(
            [Problem(name, None, None, "is not a file, and hub datasets need the network")],
            hint="pass a local JSONL/JSON/Parquet/CSV file, or set TUNELAB_ONLINE=1 to fetch from the hub",
        )
    import datasets

    name, _, split = name.partition(":")
    for i, row in enumerate(datasets.load_dataset(name, split=split or "train", streaming=True), 1):
        yield i, dict(row)


READERS = {
    ".jsonl": _jsonl_records,
    ".ndjson": _jsonl_records,
    ".json": _json_records,
    ".csv": _csv_records,
    ".txt": _txt_records,
    ".md": _txt_records,
    ".parquet": _parquet_records,
    ".pq": _parquet_records,
}


def records(path: str | Path) -> Iterator[Record]:
    """Raw records of a file, as (line or row number, dict | Problem); file problems raise DataError."""
    p = Path(path)
    if not p.exists():
        if "/" in str(path) and not p.suffix and not str(path).startswith((".", "/")):
            yield from _hub_records(str(path))
            return
        raise DataError(
            [Problem(str(p), None, None, "does not exist")],
            hint="check the path (relative paths start from the current folder)",
        )
    if p.is_dir():
        raise DataError([Problem(str(p), None, None, "is a folder, expected a data file")])
    try:
        mode = p.stat().st_mode
    except OSError as exc:
        raise DataError([Problem(str(p), None, None, f"cannot be read ({exc.strerror})")]) from None
    if not stat.S_ISREG(mode):  # a FIFO would block for ever, /dev/zero never ends
        raise DataError([Problem(str(p), None, None, "is not a regular file (a pipe, a device or a socket)")])
    if p.stat().st_size == 0:
        raise DataError([Problem(str(p), None, None, "is empty (0 bytes, no rows)")])
    suffix = Path(p.stem).suffix if p.suffix.lower() == ".gz" else p.suffix  # x.jsonl.gz reads as x.jsonl
    if p.suffix.lower() == ".gz" and suffix.lower() not in (".jsonl", ".ndjson", ".txt", ".md"):
        raise DataError([Problem(str(p), None, None, "is gzipped; only .jsonl.gz and .txt.gz can be read")])
    reader = READERS.get(suffix.lower(), _jsonl_records)  # unknown suffix: try one JSON object per line
    try:
        for line, record in reader(p):
            flaw = _first_flaw(record) if isinstance(record, dict) else None
            yield line, (Problem(str(p), line, *flaw) if flaw else record)
    except (OSError, EOFError, zlib.error) as exc:  # a read error, a truncated or broken .gz
        raise DataError(
            [Problem(str(p), None, None, f"cannot be read ({getattr(exc, 'strerror', None) or exc})")]
        ) from None


def check_dataset(path: str | Path, kind: str) -> tuple[list[Row], list[Problem]]:
    """Every valid row (normalised) and every problem found; nothing is raised for bad rows."""
    check_kind(kind)
    rows: list[Row] = []
    problems: list[Problem] = []
    for line, record in records(path):
        if isinstance(record, Problem):
            problems.append(record)
            continue
        try:
            rows.append(normalise(kind, record))
        except RowError as err:
            problems.append(Problem(str(path), line, err.field, err.message))
    if not rows and not problems:
        problems.append(Problem(str(path), None, None, "has no rows (only blank lines)"))
    return rows, problems


def read_dataset(path: str | Path, kind: str) -> list[Row]:
    """All rows of `path` as the given kind; any bad row stops here, before compute is spent."""
    rows, problems = check_dataset(path, kind)
    if problems:
        raise DataError(
            problems,
            n_ok=len(rows),
            hint=f"run `tunelab data check {path} --kind {kind}` to see every problem",
        )
    return rows
