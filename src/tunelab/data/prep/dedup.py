"""`tunelab data dedup IN... --out DIR`: drop exact and near-duplicate documents across all files.

    tunelab data dedup clean/ --out dedup/ threshold=0.7

Exact: documents equal after lower-casing and stripping punctuation and spacing (a 64-bit hash).
Near: MinHash signatures (datasketch) of each document's set of word n-grams, banded for LSH with the
(bands, rows) datasketch picks for `threshold`; documents that share a band are candidates, and a
candidate joins a cluster only if the signatures agree on at least `threshold` of their positions
(estimated Jaccard similarity), so the threshold means what it says. The first document of a cluster
is kept.

Memory stays flat: signatures go to a scratch file and the band keys to one file per band, which is
sorted one band at a time (datasketch's in-memory MinHashLSH index grows with every document: ~1 KB
each). What stays in memory is a few arrays of 8 bytes per document (cluster parents, hashes, one
band's keys). The input is read twice: once to sign, once to write the kept documents.
Outputs: kept documents as JSONL shards, removed.jsonl (each removed document and the one it
duplicates) and report.json (counts, clusters with examples).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunelab.data.prep.clean import plain_words
from tunelab.data.prep.config import DedupConfig
from tunelab.data.prep.stream import (
    Doc,
    Meter,
    ShardWriter,
    bounded_map,
    chunks,
    input_bytes,
    input_files,
    json_line,
    read_docs,
    write_report,
)

_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising false positives + false negatives at `threshold` (datasketch)."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def exact_key(text: str) -> int:
    import xxhash

    return xxhash.xxh64_intdigest(" ".join(plain_words(text)).encode("utf-8"))


def shingles(text: str, n: int) -> list[bytes]:
    """The document's set of word n-grams (one shingle of all its words when it has fewer than n)."""
    words = plain_words(text)
    if len(words) <= n:
        return [" ".join(words).encode("utf-8")]
    return list({" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)})


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(N, bands) uint64: one FNV-1a style hash of each band's `rows` signature values."""
    keys = np.empty((len(sigs), bands), dtype=np.uint64)
    for b in range(bands):
        h = np.full(len(sigs), _FNV_OFFSET, dtype=np.uint64)
        for col in sigs[:, b * rows : (b + 1) * rows].T.astype(np.uint64):
            h = (h ^ col) * _FNV_PRIME  # uint64 arithmetic wraps around, as a hash should
        keys[:, b] = h
    return keys


class Signatures:
    """Rows of the signature scratch file, read with pread. A memory map would do, but every page it
    touches (and the neighbours the kernel maps with it) counts as resident: the whole file, soon."""

    def __init__(self, path: Path, num_perm: int):
        self.file = path.open("rb")
        self.row_bytes = 4 * num_perm
        self.num_perm = num_perm

    def __getitem__(self, index) -> np.ndarray:
        """(num_perm,) for an int, (k, num_perm) for an array of document indices."""
        if np.ndim(index) == 0:
            return self._row(int(index))
        return (
            np.stack([self._row(int(i)) for i in index])
            if len(index)
            else np.empty((0, self.num_perm), np.uint32)
        )

    def _row(self, i: int) -> np.ndarray:
        return np.frombuffer(
            os.pread(self.file.fileno(), self.row_bytes, i * self.row_bytes), dtype=np.uint32
        )

    def close(self) -> None:
        self.file.close()


def similarity(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity: the share of MinHash positions where two signatures agree."""
    return (sig_a == sig_b).mean(axis=-1)


# ---------------------------------------------------------------- signatures, in worker processes

_SIGNER: dict = {}


def _init(cfg_dict: dict) -> None:
    from datasketch import MinHash

    cfg = DedupConfig(**cfg_dict)
    template = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)  # permutations drawn once, reused per doc
    _SIGNER.update(cfg=cfg, permutations=template.permutations, scheme=template.scheme)


@dataclass
class Signed:
    exact: np.ndarray  # (n,) uint64 hash of the normalised text
    sigs: np.ndarray  # (n, num_perm) uint32 MinHash signature
    chars: int


def sign_chunk(chunk: list[Doc]) -> Signed:
    import xxhash
    from datasketch import MinHash

    cfg: DedupConfig = _SIGNER["cfg"]
    docs = [d for d in chunk if d.text.strip()]
    sigs = np.empty((len(docs), cfg.num_perm), dtype=np.uint32)
    for i, doc in enumerate(docs):
        m = MinHash(
            num_perm=cfg.num_perm,
            permutations=_SIGNER["permutations"],
            scheme=_SIGNER["scheme"],
            hashfunc=xxhash.xxh32_intdigest,  # 4x faster than the default sha1 and as good for MinHash
        )
        m.update_batch(shingles(doc.text, cfg.ngram))
        sigs[i] = m.hashvalues
    exact = np.array([exact_key(d.text) for d in docs], dtype=np.uint64)
    return Signed(exact, sigs, sum(len(d.text) for d in chunk))


# ---------------------------------------------------------------- clusters


def _find(parent: np.ndarray, x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]  # path halving
        x = parent[x]
    return int(x)


def _union(parent: np.ndarray, a: int, b: int) -> None:
    ra, rb = _find(parent, a), _find(parent, b)
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)  # the earliest document stays the root: it is the one kept


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (first, other) of document indices with equal keys; `first` is the earliest of its run."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    first_pos = np.maximum.accumulate(np.where(starts, np.arange(len(keys)), 0))
    others = np.flatnonzero(~starts)
    return order[first_pos[others]], order[others]


def cluster(
    exact: np.ndarray, sigs: Signatures, band_files: list[Path], cfg: DedupConfig, batch: int = 8192
) -> np.ndarray:
    """The root (earliest member) of every document's cluster; a document is kept when it is its own."""
    parent = np.arange(len(exact), dtype=np.int64)
    if cfg.exact:  # fresh roots: equal hashes can point straight at the first of their run
        first, other = _runs(exact)
        parent[other] = first
    if cfg.near:
        for path in band_files:
            first, other = _runs(np.fromfile(path, dtype=np.uint64))
            for lo in range(0, len(first), batch):
                a, b = first[lo : lo + batch], other[lo : lo + batch]
                close = similarity(sigs[a], sigs[b]) >= cfg.threshold
                for x, y in zip(a[close].tolist(), b[close].tolist()):
                    _union(parent, x, y)
    while True:  # point every document at its root
        jumped = parent[parent]
        if np.array_equal(jumped, parent):
            return parent
        parent = jumped


# ---------------------------------------------------------------- the step


def run_dedup(
    inputs: list[str],
    out: Path,
    cfg: DedupConfig,
    *,
    workers: int = 1,
    compress: bool = False,
    shard_mb: float = 256,
    console=None,
) -> dict:
    """Deduplicate `inputs` into shards in `out`; returns (and writes) the report."""
    files = input_files(inputs)
    bands, rows = lsh_params(cfg.threshold, cfg.num_perm)
    work = out / ".dedup-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        with Meter("dedup", 2 * input_bytes(files), console) as meter:
            n, chars = _sign_all(files, work, cfg, bands, rows, workers, meter)
            exact = np.fromfile(work / "exact.bin", dtype=np.uint64)
            sigs = Signatures(work / "sigs.bin", cfg.num_perm)
            try:
                roots = cluster(exact, sigs, [work / f"band-{b}.bin" for b in range(bands)], cfg)
                report = _write_kept(files, out, roots, exact, sigs, cfg, compress, shard_mb, meter)
            finally:
                sigs.close()
            seconds = meter.seconds()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.update(bands=bands, rows_per_band=rows)
    return write_report(out, report, files, chars, seconds, cfg.model_dump())


def _sign_all(
    files, work: Path, cfg: DedupConfig, bands: int, rows: int, workers: int, meter
) -> tuple[int, int]:
    """Pass 1: signatures, exact hashes and band keys to scratch files. Returns (documents, characters)."""
    n = chars = 0
    band_out = [(work / f"band-{b}.bin").open("wb") for b in range(bands)]
    try:
        with (work / "sigs.bin").open("wb") as sig_out, (work / "exact.bin").open("wb") as exact_out:
            signed = bounded_map(sign_chunk, chunks(read_docs(files)), workers, _init, (cfg.model_dump(),))
            for part in signed:
                part.sigs.tofile(sig_out)
                part.exact.tofile(exact_out)
                keys = band_keys(part.sigs, bands, rows)
                for b, f in enumerate(band_out):
                    np.ascontiguousarray(keys[:, b]).tofile(f)
                n += len(part.exact)
                chars += part.chars
                meter.advance(part.chars)
    finally:
        for f in band_out:
            f.close()
    return n, chars


def _write_kept(files, out: Path, roots, exact, sigs, cfg: DedupConfig, compress, shard_mb, meter) -> dict:
    """Pass 2: kept documents to shards, removed ones to removed.jsonl, the largest clusters as examples."""
    index = np.arange(len(roots))
    removed = roots != index
    exact_dup = removed & (exact == exact[roots])
    cluster_roots, sizes = np.unique(roots[removed], return_counts=True)
    top = cluster_roots[np.argsort(-sizes, kind="stable")[: cfg.examples]].tolist()
    examples = {r: {"size": 1 + int(sizes[cluster_roots == r][0]), "kept": None, "removed": []} for r in top}
    has_cluster = np.zeros(len(roots), dtype=bool)
    has_cluster[cluster_roots] = True

    writer = ShardWriter(out, compress, shard_mb)
    root_where: dict[int, str] = {}
    empty = 0
    i = 0
    with (out / "removed.jsonl").open("w", encoding="utf-8") as log:
        for doc in read_docs(files):
            meter.advance(len(doc.text))
            if not doc.text.strip():
                empty += 1
                continue
            root = int(roots[i])
            if root == i:
                writer.write(json_line(doc.text, doc.fields))
                if has_cluster[i]:
                    root_where[i] = doc.where
                if i in examples:
                    examples[i]["kept"] = {"where": doc.where, "text": doc.text[:300]}
            else:
                sim = float(similarity(sigs[i], sigs[root]))
                reason = "exact" if exact_dup[i] else "near"
                entry = {"where": doc.where, "duplicate_of": root_where[root], "reason": reason}
                log.write(json.dumps({**entry, "similarity": round(sim, 3)}) + "\n")
                if root in examples and len(examples[root]["removed"]) < 3:
                    examples[root]["removed"].append(
                        {**entry, "similarity": round(sim, 3), "text": doc.text[:300]}
                    )
            i += 1
    shards = writer.close()
    return {
        "docs_in": len(roots) + empty,
        "docs_out": int((~removed).sum()),
        "empty": empty,
        "removed_exact": int(exact_dup.sum()),
        "removed_near": int((removed & ~exact_dup).sum()),
        "clusters": len(cluster_roots),
        "examples": [examples[r] for r in top],
        "mb_out": writer.bytes_written / 1e6,
        "shards": [p.name for p in shards],
    }
