"""Settings of `tunelab data clean` and `tunelab data dedup`, set as `key=value` on the command line
(`tunelab data clean raw/ --out clean/ min_words=20 languages=[en]`) or in a YAML file (`--config`).
Unknown keys are errors, as in every tunelab config. A threshold set to null turns its filter off.

Defaults follow Gopher (Rae et al. 2021, appendix A) for the quality and repetition rules, C4 (Raffel
et al. 2020) for boilerplate lines and lorem ipsum, and FineWeb for lines ending without punctuation.
"""

from __future__ import annotations

from pydantic import Field

from tunelab.config import SEED_MAX, Section

STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]  # Gopher's English list
BOILERPLATE = [
    "javascript",
    "cookies",
    "privacy policy",
    "terms of use",
    "terms of service",
    "all rights reserved",
    "subscribe to our newsletter",
    "click here",
]


def _share(default: float, description: str):
    """A threshold on a share of the document (of its words, lines or characters): 0 to 1."""
    return Field(default, ge=0, le=1, description=description)


class CleanConfig(Section):
    fix_unicode: bool = Field(True, description="repair mojibake and broken Unicode with ftfy")
    normalize_whitespace: bool = Field(
        True, description="unify line breaks and spaces, drop control characters, at most one blank line"
    )
    boilerplate: list[str] = Field(
        default_factory=lambda: list(BOILERPLATE),
        description="remove lines of at most boilerplate_max_words words containing one of these (any case)",
    )
    boilerplate_max_words: int = Field(
        30, ge=1, le=1_000_000_000, description="longer lines are kept even if they match"
    )
    min_words: int | None = Field(50, ge=0, le=1_000_000_000, description="drop documents with fewer words")
    max_words: int | None = Field(
        100_000, ge=1, le=1_000_000_000, description="drop documents with more words"
    )
    min_mean_word_len: float | None = Field(
        3, ge=0, le=1e9, description="drop when the mean word length is below"
    )
    max_mean_word_len: float | None = Field(
        10, ge=0, le=1e9, description="drop when the mean word length is above"
    )
    max_symbol_ratio: float | None = Field(
        0.1, ge=0, le=1e9, description="drop when '#' or ellipses per word exceed this (Gopher)"
    )
    max_digit_ratio: float | None = _share(
        0.25, "drop when digits are more than this share of non-space characters"
    )
    min_alpha_words: float | None = _share(0.8, "drop when fewer words than this share hold a letter")
    max_bullet_lines: float | None = _share(0.9, "drop when more lines than this share start with a bullet")
    max_ellipsis_lines: float | None = _share(
        0.3, "drop when more lines than this share end with an ellipsis"
    )
    min_stop_words: int | None = Field(
        2,
        ge=0,
        le=1_000_000_000,
        description="drop when fewer distinct stop words appear (English text; null for others)",
    )
    stop_words: list[str] = Field(default_factory=lambda: list(STOP_WORDS), description="the stop words")
    max_no_punct_lines: float | None = _share(
        0.88,
        "drop when more lines than this share end without terminal punctuation (hard-wrapped text: null)",
    )
    max_dup_lines: float | None = _share(
        0.3, "drop when more lines than this share are repeats of an earlier line"
    )
    max_dup_line_chars: float | None = _share(
        0.2, "drop when repeated lines hold more than this share of characters"
    )
    max_top_ngram: dict[int, float] = Field(
        default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16},
        description="n -> drop when the most frequent word n-gram covers more than this share of characters",
    )
    max_dup_ngrams: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> drop when word n-grams seen more than once cover more than this share of characters",
    )
    drop_lorem_ipsum: bool = Field(True, description="drop documents containing 'lorem ipsum' (C4)")
    languages: list[str] | None = Field(
        None, description="keep only these languages (ISO 639-1, e.g. [en]); null = no language filter"
    )
    min_language_score: float = _share(0.65, "lowest probability of a kept language (py3langid)")
    examples: int = Field(
        3, ge=0, le=1_000_000_000, description="dropped documents shown per reason in the report"
    )


class DedupConfig(Section):
    exact: bool = Field(
        True, description="drop documents equal after normalising case, spaces and punctuation"
    )
    near: bool = Field(True, description="drop near-duplicates found by MinHash LSH")
    threshold: float = Field(
        0.8, gt=0, lt=1, description="near-duplicates: estimated Jaccard similarity of word n-gram sets"
    )
    ngram: int = Field(5, ge=1, le=1000, description="words per shingle")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (signature length)")
    seed: int = Field(1, ge=0, le=SEED_MAX, description="seed of the MinHash permutations")
    examples: int = Field(
        5, ge=0, le=1_000_000_000, description="largest removed clusters shown with example texts"
    )
