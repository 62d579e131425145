"""Pre-training data pipeline: MB/s per step and peak memory at several input sizes.

    python bench/data_pipeline.py --sizes 10 1000 [--workers 2] [--model smollm2-135m] [--keep]

For each size, generates that many MB of JSONL text (pseudo-English with stop words, ~8% junk
documents, ~4% exact and ~4% near duplicates, ~3% with mojibake), then runs
`tunelab data clean`, `tunelab data dedup` and `tunelab data tokenize` on it as child processes.
Per step: text MB/s as the step reports it (text read / its own run time), wall seconds with start-up,
and the peak resident memory of the step's main process and of its whole process tree (workers
included), sampled every 0.1 s. The generated files are deleted afterwards unless --keep.
Writes bench/results/data_pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

SYLLABLES = (
    "ka lo mi ne ru sa te vo an el is or un ba de fi go hu ja li mo nu pa re si to va we ya zo".split()
)
STOP = ["the", "of", "and", "to", "that", "with", "have", "be", "a", "in", "is", "it", "for", "on", "as"]


def vocabulary(rng, n: int = 6000) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-words of 1-4 syllables and the stop words, with Zipf-like frequencies (a cdf)."""
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(SYLLABLES, size=rng.integers(1, 5))))
    vocab = np.array(STOP + sorted(words))
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    return vocab, np.cumsum(weights / weights.sum())


def document(rng, vocab, cdf) -> str:
    n_words = int(rng.integers(80, 700))
    words = vocab[np.searchsorted(cdf, rng.random(n_words))].tolist()
    lines, i = [], 0
    while i < n_words:
        k = int(rng.integers(8, 21))
        sentence = words[i : i + k]
        lines.append(" ".join(sentence).capitalize() + ".")
        i += k
    return "\n".join(lines)


def junk(rng, vocab, cdf) -> str:
    kind = rng.integers(4)
    if kind == 0:
        return "Click here to subscribe."
    if kind == 1:
        return "\n".join(" ".join(str(x) for x in rng.integers(0, 10**6, size=8)) for _ in range(20))
    if kind == 2:
        line = document(rng, vocab, cdf).split("\n")[0]
        return "\n".join([line] * 15)
    return "\n".join("#" + w + " #" + w for w in vocab[rng.integers(0, 500, size=60)].tolist())


def generate(path: Path, mb: float, seed: int = 0) -> dict:
    """`mb` MB of JSONL documents, with the mix described in the module docstring."""
    rng = np.random.default_rng(seed)
    vocab, cdf = vocabulary(rng)
    recent: list[str] = []
    counts = {"docs": 0, "junk": 0, "exact": 0, "near": 0, "mojibake": 0}
    limit = int(mb * 1e6)
    size = 0
    with path.open("w", encoding="utf-8") as f:
        while size < limit:
            roll = rng.random()
            if roll < 0.08:
                text, kind = junk(rng, vocab, cdf), "junk"
            elif roll < 0.12 and recent:
                text, kind = recent[int(rng.integers(len(recent)))], "exact"
            elif roll < 0.16 and recent:
                words = recent[int(rng.integers(len(recent)))].split(" ")
                for j in rng.integers(0, len(words), size=max(1, len(words) // 50)):
                    words[j] = str(vocab[int(rng.integers(len(vocab)))])
                text, kind = " ".join(words), "near"
            else:
                text, kind = document(rng, vocab, cdf), "docs"
                if rng.random() < 0.03:
                    text, kind = text.replace(" the ", " cafÃ© the ", 3) + " Ã‰tÃ© â€” naÃ¯ve.", "mojibake"
                recent = (recent + [text])[-200:]
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            f.write(line)
            size += len(line.encode("utf-8"))
            counts[kind] += 1
    return counts


def run_step(argv: list[str]) -> dict:
    """Run one `tunelab data ...` command; wall time and peak RSS of its main process and tree."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunelab", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    main = psutil.Process(proc.pid)
    peak_main = peak_tree = 0
    while proc.poll() is None:
        try:
            rss_main = main.memory_info().rss
            tree = rss_main + sum(c.memory_info().rss for c in main.children(recursive=True))
        except psutil.Error:  # a worker ended between listing and reading it
            tree = rss_main = 0
        peak_main, peak_tree = max(peak_main, rss_main), max(peak_tree, tree)
        time.sleep(0.1)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"tunelab {' '.join(argv)} failed:\n{err.decode()[-3000:]}")
    return {
        "wall_s": time.perf_counter() - start,
        "peak_main_mb": peak_main / 2**20,
        "peak_tree_mb": peak_tree / 2**20,
    }


def bench_size(mb: float, root: Path, workers: int, model: str) -> dict:
    raw = root / "raw.jsonl"
    t0 = time.perf_counter()
    mix = generate(raw, mb)
    gen_s = time.perf_counter() - t0
    result = {"input_mb": raw.stat().st_size / 1e6, "generate_s": gen_s, "mix": mix, "steps": {}}
    steps = [
        ("clean", ["data", "clean", str(raw), "--out", str(root / "clean")], root / "clean" / "report.json"),
        (
            "dedup",
            ["data", "dedup", str(root / "clean"), "--out", str(root / "dedup")],
            root / "dedup" / "report.json",
        ),
        (
            "tokenize",
            ["data", "tokenize", str(root / "dedup"), "--out", str(root / "tok"), "--model", model],
            root / "tok" / "meta.json",
        ),
    ]
    for name, argv, report_path in steps:
        measured = run_step([*argv, "--workers", str(workers)])
        report = json.loads(report_path.read_text())
        keep = (
            "docs_in",
            "docs_out",
            "dropped",
            "removed_exact",
            "removed_near",
            "clusters",
            "n_tokens",
            "n_docs",
        )
        measured.update(
            text_mb=report["mb_in"],
            step_s=report["seconds"],
            mb_per_s=report["mb_per_s"],
            **{k: report[k] for k in keep if k in report},
        )
        result["steps"][name] = measured
        print(
            f"{mb:>7.0f} MB  {name:<8} {measured['mb_per_s']:6.2f} MB/s  {measured['step_s']:7.1f} s "
            f"(wall {measured['wall_s']:.1f} s)  peak {measured['peak_main_mb']:6.0f} MB main, "
            f"{measured['peak_tree_mb']:6.0f} MB with workers",
            flush=True,
        )
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[10, 1000], help="input sizes in MB")
    ap.add_argument("--workers", type=int, default=2, help="processes per step")
    ap.add_argument("--model", default="smollm2-135m", help="tokenizer for the tokenize step")
    ap.add_argument("--dir", help="where to generate (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--out", default="bench/results/data_pipeline.json")
    args = ap.parse_args()

    from tunelab.models.load import load_tokenizer

    load_tokenizer(args.model)  # the embedded model converts once (~20 s): not part of any timing
    results = []
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="tunelab-bench-"))
    try:
        for mb in args.sizes:
            root = base / f"{mb:g}mb"
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            results.append(bench_size(mb, root, args.workers, args.model))
            if not args.keep:
                shutil.rmtree(
                    root, ignore_errors=True
                )  # before the next size: 1 GB of input is ~3.5 GB on disk
    finally:
        if not args.keep and not args.dir:  # the temporary folder, whatever happened
            shutil.rmtree(base, ignore_errors=True)
    record = {
        "workload": f"generated JSONL text; clean -> dedup -> tokenize ({args.model}), {args.workers} worker processes per step",
        "machine": f"{psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
