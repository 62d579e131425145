"""`tunelab data tokenize IN... --out DIR --model MODEL`: documents -> one binary token file.

    tunelab data tokenize dedup/ --out tok/ --model smollm2-135m --workers 2
    tunelab pretrain configs/pretrain.yaml data.train=tok/

DIR holds
  tokens.bin  every document's tokens followed by EOS, back to back; uint16 when the vocabulary has at
              most 65,536 ids, else uint32. numpy.memmap reads it: no parsing, nothing held in memory.
  docs.bin    uint64: where each document starts in tokens.bin (the document boundaries).
  meta.json   dtype, counts, the tokenizer and its fingerprint. Written last: a folder without it is
              unfinished, and `tunelab pretrain` refuses it.
The EOS after each document is the same boundary `tunelab pretrain` puts between documents of raw
text (data/render.py: render_text), so both paths train on the same token stream.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunelab.data.prep.stream import Doc, Meter, bounded_map, chunks, input_bytes, input_files, read_docs
from tunelab.errors import TunelabError

FORMAT = "tunelab.tokens"
_PROBE = "Tokenizer probe: The quick brown fox, 0123456789 + {json} café naïve 東京 <|im_end|>\n\tend."


def tokenizer_fingerprint(tok) -> str:
    """A short hash of how the tokenizer encodes a probe text, its size and EOS: two tokenizers with the
    same fingerprint give the same ids, so a token folder can be checked against a model's tokenizer."""
    probe = tok(_PROBE, add_special_tokens=False)["input_ids"]
    return hashlib.sha1(json.dumps([len(tok), tok.eos_token_id, probe]).encode()).hexdigest()[:16]


def dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


def read_meta(folder: str | Path) -> dict | None:
    """meta.json of a finished token folder, or None when `folder` is not one."""
    path = Path(folder) / "meta.json"
    if not (path.is_file() and (Path(folder) / "tokens.bin").is_file()):
        return None
    meta = json.loads(path.read_text())
    return meta if meta.get("format") == FORMAT else None


def is_token_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and read_meta(path) is not None


# ---------------------------------------------------------------- one chunk in a worker process

_TOK: dict = {}


def _init(tokenizer_json: str, eos_id: int, dtype: str) -> None:
    """Workers rebuild the fast tokenizer from its JSON with `tokenizers` alone: no transformers or
    torch to import (seconds and ~300 MB per process), and the same ids as `tok(text)`."""
    from tokenizers import Tokenizer

    _TOK.update(tok=Tokenizer.from_str(tokenizer_json), eos=eos_id, dtype=dtype)


@dataclass
class Encoded:
    tokens: np.ndarray  # (n_tokens,) every document's ids + EOS, back to back
    lengths: np.ndarray  # (n_docs,) tokens per document, EOS included
    chars: int
    empty: int


def tokenize_chunk(chunk: list[Doc]) -> Encoded:
    dtype = _TOK["dtype"]
    texts = [d.text for d in chunk if d.text.strip()]
    tok = _TOK["tok"]
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # _fast: no offsets, ~40% quicker
    ids = [e.ids for e in encode(texts, add_special_tokens=False)] if texts else []
    eos = np.array([_TOK["eos"]], dtype=dtype)
    parts = [part for doc in ids for part in (np.asarray(doc, dtype=dtype), eos)]
    tokens = np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
    lengths = np.array([len(doc) + 1 for doc in ids], dtype=np.uint64)
    return Encoded(tokens, lengths, sum(len(d.text) for d in chunk), len(chunk) - len(texts))


# ---------------------------------------------------------------- the step


def run_tokenize(
    inputs: list[str], out: Path, tok, *, model: str | None = None, workers: int = 1, console=None
) -> dict:
    """Tokenise `inputs` into `out` (tokens.bin, docs.bin, meta.json) with `tok` (the caller loads it:
    `models.load.load_tokenizer`; `model` names it in messages and the meta); returns the meta."""
    model = model or getattr(tok, "name_or_path", "") or "the tokenizer"
    files = input_files(inputs)
    if tok.eos_token_id is None:
        raise TunelabError(f"{model}'s tokenizer has no EOS token to mark where documents end.")
    if not getattr(tok, "is_fast", False):
        raise TunelabError(f"{model}'s tokenizer is not a fast (Rust) tokenizer; data tokenize needs one.")
    dtype = dtype_for(len(tok))
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # unfinished until the new meta is written
    n_tokens = n_docs = chars = empty = 0
    with (
        (out / "tokens.bin.tmp").open("wb") as tokens_out,
        (out / "docs.bin.tmp").open("wb") as docs_out,
        Meter("tokenize", input_bytes(files), console) as meter,
    ):
        for part in bounded_map(
            tokenize_chunk,
            chunks(read_docs(files)),
            workers,
            _init,
            (tok.backend_tokenizer.to_str(), tok.eos_token_id, dtype),
        ):
            starts = np.uint64(n_tokens) + np.cumsum(part.lengths, dtype=np.uint64) - part.lengths
            starts.tofile(docs_out)
            part.tokens.tofile(tokens_out)
            n_tokens += len(part.tokens)
            n_docs += len(part.lengths)
            chars += part.chars
            empty += part.empty
            meter.advance(part.chars)
        seconds = meter.seconds()
    if n_tokens == 0:
        raise TunelabError(f"{', '.join(map(str, files))}: no text to tokenise.")
    os.replace(out / "tokens.bin.tmp", out / "tokens.bin")
    os.replace(out / "docs.bin.tmp", out / "docs.bin")
    meta = {
        "format": FORMAT,
        "version": 1,
        "dtype": dtype,
        "n_tokens": n_tokens,
        "n_docs": n_docs,
        "empty_docs_skipped": empty,
        "eos_id": tok.eos_token_id,
        "vocab_size": len(tok),
        "tokenizer": model,
        "tokenizer_fingerprint": tokenizer_fingerprint(tok),
        "chars_per_token": chars / n_tokens,
        "mb_in": chars / 1e6,
        "seconds": seconds,
        "mb_per_s": chars / 1e6 / max(seconds, 1e-9),
        "inputs": [str(f) for f in files],
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def documents(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(tokens memmap, start offsets) of a token folder: document i is tokens[starts[i]:starts[i+1]]."""
    meta = read_meta(folder)
    if meta is None:
        raise TunelabError(f"{folder} is not a finished token folder (no meta.json next to tokens.bin).")
    tokens = np.memmap(Path(folder) / "tokens.bin", dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"],))
    starts = np.fromfile(Path(folder) / "docs.bin", dtype=np.uint64)
    return tokens, starts
