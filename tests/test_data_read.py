"""Reading every kind and format, the accepted aliases, and a clear error for each kind of bad input."""

import json

import pytest
from conftest import write_jsonl

from tunelab.data.read import check_dataset, read_dataset
from tunelab.errors import DataError, TunelabError


def test_pairs_aliases_are_normalised(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "a", "completion": "b"},
            {"input": "c", "output": "d"},
            {"instruction": "Translate", "input": "cat", "output": "chat"},
            {"instruction": "Say hi", "input": "", "output": "hi"},
        ],
    )
    assert read_dataset(path, "pairs") == [
        {"prompt": "a", "completion": "b"},
        {"prompt": "c", "completion": "d"},
        {"prompt": "Translate\n\ncat", "completion": "chat"},
        {"prompt": "Say hi", "completion": "hi"},
    ]


def test_sharegpt_becomes_messages(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {
                "conversations": [
                    {"from": "system", "value": "be brief"},
                    {"from": "human", "value": "hi"},
                    {"from": "gpt", "value": "hello"},
                ]
            },
        ],
    )
    assert read_dataset(path, "chat") == [
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ]
        }
    ]


def test_preference_defaults_and_judgments(tmp_path):
    pref = write_jsonl(
        tmp_path / "pref.jsonl", [{"prompt": "q", "chosen": "good", "rejected": "bad", "margin": 0.5}]
    )
    assert read_dataset(pref, "preference") == [
        {"prompt": "q", "chosen": "good", "rejected": "bad", "margin": 0.5, "weight": 1.0}
    ]
    judg = write_jsonl(tmp_path / "j.jsonl", [{"model_a": "x", "model_b": "y", "winner": "tie (bothbad)"}])
    assert read_dataset(judg, "judgments")[0]["winner"] == "tie (bothbad)"


def test_json_csv_parquet_read_the_same_rows(tmp_path):
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    (tmp_path / "p.json").write_text(json.dumps(rows))
    (tmp_path / "p.csv").write_text("prompt,completion\na,b\nc,d\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    for name in ("p.json", "p.csv", "p.parquet"):
        assert read_dataset(tmp_path / name, "pairs") == rows, name


def test_csv_problem_names_the_csv_line(tmp_path):
    (tmp_path / "p.csv").write_text('prompt,completion\na,b\n"multi\nline",\n')
    _, problems = check_dataset(tmp_path / "p.csv", "pairs")
    assert [(p.line, p.field) for p in problems] == [(4, "completion")]  # the row ends on line 4


# Each bad input: (file content or None for a missing file, kind, what the message must say)
BAD = {
    "missing_file": (None, "pairs", ["does not exist"]),
    "empty_file": (b"", "pairs", ["is empty"]),
    "not_json": (
        b'{"prompt": "a", "completion": "b"}\n{"prompt": oops}\n',
        "pairs",
        [":2:", "not valid JSON"],
    ),
    "missing_field": (b'{"prompt": "a"}\n', "pairs", [":1:", "'completion'", "missing"]),
    "wrong_type": (
        b'{"prompt": ["a", "list"], "completion": "b"}\n',
        "pairs",
        [":1:", "'prompt'", "expected text, got list"],
    ),
    "empty_completion": (
        b'{"prompt": "a", "completion": ""}\n',
        "pairs",
        [":1:", "'completion'", "is empty"],
    ),
    "chat_no_assistant": (
        b'{"messages": [{"role": "user", "content": "hi"}]}\n',
        "chat",
        [":1:", "'messages'", "no assistant turn"],
    ),
    "chosen_is_rejected": (
        b'{"prompt": "q", "chosen": "same", "rejected": "same"}\n',
        "preference",
        [":1:", "'rejected'", "same as chosen"],
    ),
    "not_utf8": (
        b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n',
        "pairs",
        [":2:", "not UTF-8"],
    ),
    "bad_role": (b'{"messages": [{"role": "robot", "content": "x"}]}\n', "chat", [":1:", "messages[0].role"]),
    "bad_winner": (b'{"model_a": "x", "model_b": "y", "winner": "x"}\n', "judgments", [":1:", "'winner'"]),
    "negative_weight": (
        b'{"prompt": "q", "chosen": "a", "rejected": "b", "weight": -1}\n',
        "preference",
        [":1:", "'weight'"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_file_line_and_field(tmp_path, case):
    content, kind, expected = BAD[case]
    path = tmp_path / f"{case}.jsonl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_dataset(path, kind)
    message = str(err.value)
    assert str(path) in message
    for piece in expected:
        assert piece in message, f"{piece!r} not in {message!r}"


def test_all_problems_reported_at_once_and_good_rows_counted(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "a", "completion": "b"},
            "nope",
            {"prompt": "a"},
            {"prompt": "a", "completion": "b"},
            {"prompt": 3, "completion": "b"},
        ],
    )
    rows, problems = check_dataset(path, "pairs")
    assert len(rows) == 2 and [p.line for p in problems] == [2, 3, 5]
    with pytest.raises(DataError, match="2 row\\(s\\) were fine"):
        read_dataset(path, "pairs")


def test_unknown_kind():
    with pytest.raises(TunelabError, match="Unknown data kind 'pair'.*pairs"):
        read_dataset("x.jsonl", "pair")
