"""`tunelab data clean IN... --out DIR`: repair, normalise and filter documents for pre-training.

    tunelab data clean raw/*.jsonl --out clean/ --workers 2 min_words=20 languages=[en]

Each document is repaired (ftfy), normalised (line breaks, spaces, control characters, boilerplate
lines) and then judged by the filters of FILTERS in order; the first that fails names the reason it is
dropped, and every reason is counted. Settings: data/prep/config.py (CleanConfig). The kept documents
go to JSONL shards with the same `text` field (other fields kept), so `tunelab data dedup` reads them.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from itertools import filterfalse
from pathlib import Path

from tunelab.data.prep.config import CleanConfig
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

PUNCT = string.punctuation + "…“”‘’«»—–·•"
_NO_PUNCT = str.maketrans("", "", PUNCT)
_LETTER = re.compile(r"[^\W\d_]")
TERMINAL = (".", "!", "?", '"', "'", "”", "’", "…", "。", "！", "？", ":", ";", ")")
BULLETS = ("•", "-", "*", "·", "‣", "–")
_SPACE = r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]"
# after a word (indentation is left alone): two or more spaces, or one that is not a plain space
_INNER_SPACES = re.compile(rf"(?<=\S)(?:{_SPACE}{{2,}}|[^\S \n])")
_TRAILING_SPACES = re.compile(rf"{_SPACE}+$", re.MULTILINE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")
_BLANKS = re.compile(r"\n{3,}")


# ---------------------------------------------------------------- repair and normalise


def repair_unicode(text: str) -> str:
    """ftfy, line by line, skipping plain-ASCII lines: ftfy repairs each line on its own anyway, and a
    line of ASCII without '&' (HTML entities) or ESC (terminal codes) has nothing it would change beyond
    what the whitespace step does. ftfy costs ~1 ms per KB of non-ASCII text, so this is most of the speed.
    """
    import ftfy

    if text.isascii() and "&" not in text and "\x1b" not in text:
        return text
    return "".join(
        line if line.isascii() and "&" not in line and "\x1b" not in line else ftfy.fix_text(line)
        for line in text.splitlines(keepends=True)
    )


def normalise_whitespace(text: str) -> str:
    """One kind of line break, one space between words (indentation kept: code stays readable), no
    control or zero-width characters, no trailing spaces, at most one blank line in a row."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    # whole text at once, and only when a cheap test says the pattern can match (regex scans are the cost)
    plain = text.isascii()
    if not plain or "  " in text or "\t" in text:
        text = _INNER_SPACES.sub(" ", text)
    if not plain or " \n" in text or "\t\n" in text or text.endswith((" ", "\t")):
        text = _TRAILING_SPACES.sub("", text)
    if "\n\n\n" in text:
        text = _BLANKS.sub("\n\n", text)
    return text.strip("\n")


def remove_boilerplate(text: str, patterns: list[str], max_words: int) -> tuple[str, int]:
    """Drop short lines that are site furniture (C4: 'enable javascript', cookie notices...)."""
    low_text = text.lower()
    if not any(p in low_text for p in patterns):  # most documents: one scan per pattern, no loop per line
        return text, 0
    kept, removed = [], 0
    for line in text.split("\n"):
        low = line.lower()
        if any(p in low for p in patterns) and len(line.split()) <= max_words:
            removed += 1
        else:
            kept.append(line)
    return ("\n".join(kept), removed) if removed else (text, 0)


def normalise(text: str, cfg: CleanConfig) -> tuple[str, int]:
    """(repaired and normalised text, boilerplate lines removed)."""
    if cfg.fix_unicode:
        text = repair_unicode(text)
    if cfg.normalize_whitespace:
        text = normalise_whitespace(text)
    text, removed = remove_boilerplate(text, [p.lower() for p in cfg.boilerplate], cfg.boilerplate_max_words)
    if removed and cfg.normalize_whitespace:
        text = _BLANKS.sub("\n\n", text).strip("\n")
    return text.strip("\n"), removed  # leading spaces stay: they may be a code block's indentation


# ---------------------------------------------------------------- what the filters look at


def plain_words(text: str) -> list[str]:
    """Words in lower case without punctuation; words of only symbols are gone (also dedup's words).
    One translate over the whole text: per-word strip and lower cost three times as much."""
    return text.lower().translate(_NO_PUNCT).split()


class DocView:
    """The parts of a document the filters measure, each computed once and only when asked for."""

    def __init__(self, text: str):
        self.text = text

    @cached_property
    def words(self) -> list[str]:  # whitespace-separated, as written
        return self.text.split()

    @cached_property
    def plain_words(self) -> list[str]:  # lower case, punctuation stripped, pure-symbol words gone
        return plain_words(self.text)

    @cached_property
    def lines(self) -> list[str]:
        return [line.strip() for line in self.text.split("\n") if line.strip()]

    @cached_property
    def word_chars(self) -> int:
        return sum(map(len, self.plain_words))


def duplicate_ngram_share(words: list[str], n: int) -> float:
    """Share of word characters inside word n-grams that occur more than once (Gopher)."""
    if len(words) < n:
        return 0.0
    grams = list(zip(*(words[i:] for i in range(n))))
    counts = Counter(grams)
    if len(counts) == len(grams):  # nothing repeats (most documents): decided at C speed
        return 0.0
    covered = bytearray(len(words))
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            covered[i : i + n] = b"\x01" * n
    total = sum(map(len, words))
    return sum(len(w) for w, c in zip(words, covered) if c) / max(total, 1)


def top_ngram_share(words: list[str], n: int) -> float:
    """Share of word characters taken by the most frequent word n-gram (Gopher)."""
    if len(words) < n:
        return 0.0
    counts = Counter(zip(*(words[i:] for i in range(n))))
    gram, count = counts.most_common(1)[0]
    if count < 2:
        return 0.0
    return count * sum(map(len, gram)) / max(sum(map(len, words)), 1)


_LANGID = None


def language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) from py3langid, whose model ships inside the package (offline)."""
    global _LANGID
    if _LANGID is None:
        from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

        _LANGID = LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)
    lang, prob = _LANGID.classify(text[:4000].replace("\n", " "))
    return lang, float(prob)


# ---------------------------------------------------------------- the filters: True = drop


def _too_short(d: DocView, c: CleanConfig) -> bool:
    return c.min_words is not None and len(d.plain_words) < c.min_words


def _too_long(d: DocView, c: CleanConfig) -> bool:
    return c.max_words is not None and len(d.plain_words) > c.max_words


def _mean_word_length(d: DocView, c: CleanConfig) -> bool:
    mean = d.word_chars / max(len(d.plain_words), 1)
    return (c.min_mean_word_len is not None and mean < c.min_mean_word_len) or (
        c.max_mean_word_len is not None and mean > c.max_mean_word_len
    )


def _symbols(d: DocView, c: CleanConfig) -> bool:
    if c.max_symbol_ratio is None:
        return False
    n = max(len(d.words), 1)
    ellipses = d.text.count("...") + d.text.count("…")
    return d.text.count("#") / n > c.max_symbol_ratio or ellipses / n > c.max_symbol_ratio


def _digits(d: DocView, c: CleanConfig) -> bool:
    if c.max_digit_ratio is None:
        return False
    digits = sum(map(d.text.count, "0123456789"))  # ten C-speed scans beat a Python loop over characters
    visible = len(d.text) - d.text.count(" ") - d.text.count("\n")
    return digits / max(visible, 1) > c.max_digit_ratio


def _alpha_words(d: DocView, c: CleanConfig) -> bool:
    if c.min_alpha_words is None:
        return False
    mixed = list(filterfalse(str.isalpha, d.words))  # most words are letters only: found at C speed
    alpha = len(d.words) - len(mixed) + sum(map(bool, map(_LETTER.search, mixed)))
    return alpha / max(len(d.words), 1) < c.min_alpha_words


def _bullet_lines(d: DocView, c: CleanConfig) -> bool:
    if c.max_bullet_lines is None or not d.lines:
        return False
    return sum(line.startswith(BULLETS) for line in d.lines) / len(d.lines) > c.max_bullet_lines


def _ellipsis_lines(d: DocView, c: CleanConfig) -> bool:
    if c.max_ellipsis_lines is None or not d.lines:
        return False
    return sum(line.endswith(("...", "…")) for line in d.lines) / len(d.lines) > c.max_ellipsis_lines


def _stop_words(d: DocView, c: CleanConfig) -> bool:
    if not c.min_stop_words:
        return False
    return len(set(c.stop_words).intersection(d.plain_words)) < c.min_stop_words


def _lorem_ipsum(d: DocView, c: CleanConfig) -> bool:
    return c.drop_lorem_ipsum and "lorem ipsum" in d.text.lower()


def _no_punct_lines(d: DocView, c: CleanConfig) -> bool:
    if c.max_no_punct_lines is None or not d.lines:
        return False
    bare = sum(not line.endswith(TERMINAL) for line in d.lines)
    return bare / len(d.lines) > c.max_no_punct_lines


def _duplicate_lines(d: DocView, c: CleanConfig) -> bool:
    if (c.max_dup_lines is None and c.max_dup_line_chars is None) or not d.lines:
        return False
    seen: set[str] = set()
    dup_lines = dup_chars = 0
    for line in d.lines:
        if line in seen:
            dup_lines += 1
            dup_chars += len(line)
        seen.add(line)
    chars = sum(map(len, d.lines))
    return (c.max_dup_lines is not None and dup_lines / len(d.lines) > c.max_dup_lines) or (
        c.max_dup_line_chars is not None and dup_chars / max(chars, 1) > c.max_dup_line_chars
    )


def _top_ngram(d: DocView, c: CleanConfig) -> bool:
    return any(top_ngram_share(d.plain_words, n) > limit for n, limit in sorted(c.max_top_ngram.items()))


def _duplicate_ngrams(d: DocView, c: CleanConfig) -> bool:
    """The covered share can only shrink as n grows (a repeated (n+1)-gram is two repeated n-grams over
    the same words), so once it is under every remaining limit, larger n need not be counted."""
    limits = sorted(c.max_dup_ngrams.items())
    for i, (n, limit) in enumerate(limits):
        share = duplicate_ngram_share(d.plain_words, n)
        if share > limit:
            return True
        if share <= min(lim for _, lim in limits[i:]):
            return False
    return False


def _language(d: DocView, c: CleanConfig) -> bool:
    if not c.languages:
        return False
    lang, prob = language(d.text)
    return lang not in c.languages or prob < c.min_language_score


FILTERS: list[
    tuple[str, Callable[[DocView, CleanConfig], bool]]
] = [  # cheap first; the first failure names the reason
    ("too_short", _too_short),
    ("too_long", _too_long),
    ("mean_word_length", _mean_word_length),
    ("symbols", _symbols),
    ("digits", _digits),
    ("alpha_words", _alpha_words),
    ("bullet_lines", _bullet_lines),
    ("ellipsis_lines", _ellipsis_lines),
    ("stop_words", _stop_words),
    ("lorem_ipsum", _lorem_ipsum),
    ("no_punct_lines", _no_punct_lines),
    ("duplicate_lines", _duplicate_lines),
    ("top_ngram", _top_ngram),
    ("duplicate_ngrams", _duplicate_ngrams),
    ("language", _language),
]
REASONS = ["empty", *(name for name, _ in FILTERS)]


def clean_text(text: str, cfg: CleanConfig) -> tuple[str | None, str | None, int]:
    """(cleaned text or None, the reason it was dropped or None, boilerplate lines removed)."""
    text, removed = normalise(text, cfg)
    if not text.strip():
        return None, "empty", removed
    view = DocView(text)
    for name, dropped in FILTERS:
        if dropped(view, cfg):
            return None, name, removed
    return text, None, removed


# ---------------------------------------------------------------- one chunk in a worker process


@dataclass
class ChunkResult:
    lines: list[str] = field(default_factory=list)  # kept documents as JSON lines
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[dict]] = field(default_factory=dict)
    boilerplate_lines: int = 0
    docs: int = 0
    chars_in: int = 0


_CFG: CleanConfig | None = None


def _init(cfg_dict: dict) -> None:
    global _CFG
    _CFG = CleanConfig(**cfg_dict)


def clean_chunk(chunk: list[Doc]) -> ChunkResult:
    cfg = _CFG
    assert cfg is not None, "_init first"
    out = ChunkResult(docs=len(chunk))
    for doc in chunk:
        out.chars_in += len(doc.text)
        text, reason, removed = clean_text(doc.text, cfg)
        out.boilerplate_lines += removed
        if reason is None:
            out.lines.append(json_line(text, doc.fields))
            continue
        out.dropped[reason] += 1
        shown = out.examples.setdefault(reason, [])
        if len(shown) < cfg.examples:
            shown.append({"where": doc.where, "text": doc.text[:300]})
    return out


def run_clean(
    inputs: list[str],
    out: Path,
    cfg: CleanConfig,
    *,
    workers: int = 1,
    compress: bool = False,
    shard_mb: float = 256,
    console=None,
) -> dict:
    """Clean every document of `inputs` into shards in `out`; returns (and writes) the report."""
    files = input_files(inputs)
    total = input_bytes(files)
    writer = ShardWriter(out, compress, shard_mb)
    report: dict = {"docs_in": 0, "docs_out": 0, "dropped": Counter(), "boilerplate_lines": 0, "examples": {}}
    chars_in = 0
    with Meter("clean", total, console) as meter:
        work = chunks(read_docs(files))
        for result in bounded_map(clean_chunk, work, workers, _init, (cfg.model_dump(),)):
            for line in result.lines:
                writer.write(line)
            report["docs_in"] += result.docs
            report["docs_out"] += len(result.lines)
            report["dropped"].update(result.dropped)
            report["boilerplate_lines"] += result.boilerplate_lines
            for reason, shown in result.examples.items():
                have = report["examples"].setdefault(reason, [])
                have += shown[: cfg.examples - len(have)]
            chars_in += result.chars_in
            meter.advance(result.chars_in)
        seconds = meter.seconds()
    shards = writer.close()
    report.update(
        dropped={r: report["dropped"][r] for r in REASONS if report["dropped"][r]},
        mb_out=writer.bytes_written / 1e6,
        shards=[p.name for p in shards],
    )
    return write_report(out, report, files, chars_in, seconds, cfg.model_dump())
