"""Answer extractors and metrics: pure functions on strings, shared by evaluation and RL rewards.

    answer = EXTRACTORS["json"]('Sure! {"a": 1} hope it helps')      # -> '{"a": 1}'
    METRICS["normalized"]("The  Paris.", "paris")                       # -> 1.0

An extractor turns a model's whole output into the answer the metric compares; a metric is
`(prediction, reference) -> float` in [0, 1] (ROUGE-L too). A task names one extractor and one or more
metrics; a user metric `module:function` is called as `function(prediction, example_row)`.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable

NUMBER = re.compile(r"-?\d+(?:[.,]\d+)?")
ANSWER_MARKER = re.compile(r"(?i)(?:final answer|answer)\s*[:=]")
ARTICLES = re.compile(r"\b(a|an|the)\b")
CHOICE = re.compile(r"\(?\b([A-Z])\b\)?")


def after_marker(text: str, marker: re.Pattern = ANSWER_MARKER) -> str:
    """The text after the last 'Answer:' (or 'Final answer:') marker, else the whole text; stripped."""
    return marker.split(text)[-1].strip().strip(".").strip()


def first_json(text: str) -> str:
    """The first JSON object or array in the text, re-serialised compactly; '' when there is none."""
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char in "{[":
            try:
                value, _ = decoder.raw_decode(text, start)
            except json.JSONDecodeError:
                continue
            return json.dumps(value, ensure_ascii=False)
    return ""


def last_number(text: str) -> float | None:
    found = NUMBER.findall(text)
    return float(found[-1].replace(",", ".")) if found else None


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().splitlines() if line.strip()]


def choice_letter(text: str) -> str:
    """The first standalone capital letter (A, (B), C.) — how multiple-choice answers are given."""
    found = CHOICE.search(text.strip())
    return found.group(1) if found else text.strip()[:1].upper()


EXTRACTORS: dict[str, Callable[[str], str]] = {
    "strip": str.strip,
    "first_line": lambda text: (_lines(text) or [""])[0],
    "last_line": lambda text: (_lines(text) or [""])[-1],
    "json": first_json,
    "number": lambda text: "" if (n := last_number(text)) is None else f"{n:g}",
    "choice": choice_letter,
    "answer": after_marker,
}


def extractor(spec: str) -> Callable[[str], str]:
    """A named extractor, or `regex:PATTERN` (group 1 if the pattern has one, else the match)."""
    if spec in EXTRACTORS:
        return EXTRACTORS[spec]
    if spec.startswith("regex:"):
        pattern = re.compile(spec[len("regex:") :], re.DOTALL)

        def by_regex(text: str) -> str:
            found = pattern.findall(text)
            if not found:
                return ""
            last = found[-1]
            return (last[0] if isinstance(last, tuple) else last).strip()

        return by_regex
    raise KeyError(spec)


# ---------------------------------------------------------------- metrics (prediction, reference) -> float


def normalize_text(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's answer normalisation)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    return " ".join(ARTICLES.sub(" ", text).split())


def exact(prediction: str, reference: str) -> float:
    return float(prediction.strip() == reference.strip())


def normalized(prediction: str, reference: str) -> float:
    return float(normalize_text(prediction) == normalize_text(reference))


def numeric(prediction: str, reference: str, tolerance: float = 1e-6) -> float:
    """1 when the last number of the prediction is within `tolerance` of the reference's."""
    got, want = last_number(prediction), last_number(reference)
    return float(got is not None and want is not None and abs(got - want) <= tolerance)


def contains(prediction: str, reference: str) -> float:
    """1 when the normalised reference appears in the normalised prediction ("The capital is Paris.")."""
    ref = normalize_text(reference)
    return float(bool(ref) and f" {ref} " in f" {normalize_text(prediction)} ")


def multiple_choice(prediction: str, reference: str) -> float:
    return float(choice_letter(prediction) == choice_letter(reference))


def json_equal(prediction: str, reference: str) -> float:
    """1 when both parse to the same JSON value (key order and spacing do not matter)."""
    try:
        return float(json.loads(prediction) == json.loads(reference))
    except (json.JSONDecodeError, TypeError):
        return 0.0


def _lcs(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 on lower-cased words: longest common subsequence against both lengths."""
    pred, ref = normalize_text(prediction).split(), normalize_text(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


METRICS: dict[str, Callable[..., float]] = {
    "exact": exact,
    "normalized": normalized,
    "contains": contains,
    "numeric": numeric,
    "choice": multiple_choice,
    "json": json_equal,
    "rouge_l": rouge_l,
}
