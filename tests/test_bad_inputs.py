"""Bad input never ends in a traceback: every file of tests/data/bad/ goes through the command that
would read it, which either refuses it — non-zero exit, one paragraph naming the file and the line or
the key — or, where refusing would be wrong, accepts it (a BOM, CRLF line ends, fields tunelab never
reads). The CLI runs in this process, so "no traceback" means no exception escaped `tunelab.cli.main`.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

BAD = Path(__file__).parent / "data" / "bad"
HELPERS = {"ok_pairs.jsonl", "ok_task_rows.jsonl"}  # valid files the cases point to


def stage(name: str) -> list[str]:
    """A training command on the file; out= in a fresh folder, in case a bad file is wrongly accepted."""
    return [name, "model=tiny:llama", "data.train={f}", "out={tmp}/run"]


SFT = stage("sft")
EVAL = ["eval", "model=tiny:llama", "task={f}", "out={tmp}/eval"]
CHECK = ["data", "check", "{f}", "--model", "none", "--kind"]
CONFIG = ["sft", "{f}", "data.train=ok_pairs.jsonl", "out={tmp}/run"]


@dataclass
class Case:
    file: str
    argv: list[str]  # {f}: the file, {tmp}: a fresh folder
    where: str  # how the message names the place: "{f}:LINE:", the file, or the config key
    says: list[str]  # what the message must also say
    accepted: bool = False  # the right answer is to accept the file


CASES = [
    # ---- text (pretrain reads and checks every row before training when max_steps is unset)
    Case("text_missing_field.jsonl", stage("pretrain"), "{f}:2:", ["field 'text': missing"]),
    Case("text_not_a_string.jsonl", stage("pretrain"), "{f}:3:", ["expected text, got int"]),
    Case("text_not_utf8.txt", stage("pretrain"), "{f}:4:", ["not UTF-8"]),
    Case("text_only_blank_lines.jsonl", stage("pretrain"), "{f}", ["has no rows of text"]),
    # ---- pairs
    Case("pairs_broken_json.jsonl", SFT, "{f}:3:", ["is not valid JSON"]),
    Case("pairs_missing_completion.jsonl", SFT, "{f}:2:", ["field 'completion': missing"]),
    Case("pairs_wrong_type.jsonl", SFT, "{f}:2:", ["field 'prompt': expected text, got int"]),
    Case("pairs_empty_string.jsonl", SFT, "{f}:2:", ["field 'completion': is empty"]),
    Case("pairs_not_utf8.jsonl", SFT, "{f}:2:", ["is not UTF-8"]),
    Case("pairs_duplicate_key.jsonl", SFT, "{f}:2:", ["field 'completion':", "appears twice"]),
    Case("pairs_row_is_a_list.jsonl", SFT, "{f}:2:", ["expected a JSON object, got list"]),
    Case("pairs_empty_file.jsonl", SFT, "{f}", ["is empty (0 bytes"]),
    Case("pairs_not_a_list.json", SFT, "{f}", ["expected a JSON list of row objects"]),
    Case("pairs_broken.json", SFT, "{f}:4:", ["is not valid JSON"]),
    Case(
        "pairs_missing_column.csv",
        SFT,
        "{f}:2:",
        ["field 'completion': missing", "the row has ['answer', 'prompt']"],
    ),
    Case("pairs_not_parquet.parquet", SFT, "{f}", ["is not a readable Parquet file"]),
    Case(
        "pairs_10mb_line.jsonl",
        SFT,
        "{f}:1:",
        ["is not valid JSON (Unterminated string starting at column 12)"],
    ),  # made by the test
    Case("pairs_bom.jsonl", [*CHECK, "pairs"], "{f}", ["rows ok 2", "rows with problems 0"], accepted=True),
    Case("pairs_crlf.jsonl", [*CHECK, "pairs"], "{f}", ["rows ok 2", "rows with problems 0"], accepted=True),
    Case(
        "pairs_duplicate_ids.jsonl",
        [*CHECK, "pairs"],
        "{f}",
        ["rows ok 2", "rows with problems 0"],
        accepted=True,
    ),  # ids are not read
    Case(
        "pairs_nan_in_extra_field.jsonl",
        [*CHECK, "pairs"],
        "{f}",
        ["rows ok 2", "rows with problems 0"],
        accepted=True,
    ),  # nor is 'score'
    # ---- chat
    Case(
        "chat_roles_not_alternating.jsonl",
        SFT,
        "{f}:2:",
        ["field 'messages[1].role':", "'user' follows 'user'"],
    ),
    Case(
        "chat_system_not_first.jsonl",
        SFT,
        "{f}:1:",
        ["field 'messages[1].role':", "'system' is allowed only as the first turn"],
    ),
    Case("chat_unknown_role.jsonl", SFT, "{f}:1:", ["field 'messages[1].role':", "got 'bot'"]),
    Case("chat_no_assistant_turn.jsonl", SFT, "{f}:2:", ["has no assistant turn"]),
    Case(
        "chat_content_not_a_string.jsonl",
        SFT,
        "{f}:1:",
        ["field 'messages[1].content': expected text, got int"],
    ),
    Case("chat_empty_messages.jsonl", SFT, "{f}:1:", ["field 'messages': expected a non-empty list"]),
    Case("chat_sharegpt_unknown_speaker.jsonl", SFT, "{f}:1:", ["field 'conversations[1].from':", "'robot'"]),
    # ---- preference
    Case("pref_chosen_equals_rejected.jsonl", stage("rm"), "{f}:2:", ["same as chosen"]),
    Case("pref_missing_rejected.jsonl", stage("dpo"), "{f}:1:", ["field 'rejected': missing"]),
    Case("pref_negative_weight.jsonl", stage("rm"), "{f}:1:", ["field 'weight': must be >= 0"]),
    Case("pref_weight_is_text.jsonl", stage("dpo"), "{f}:1:", ["field 'weight': expected a number"]),
    Case("pref_margin_nan.jsonl", stage("rm"), "{f}:2:", ["field 'margin': expected a finite number"]),
    # ---- prompts
    Case("prompts_missing_prompt.jsonl", stage("rl"), "{f}:2:", ["field 'prompt': missing"]),
    Case("prompts_prompt_is_a_number.jsonl", stage("rl"), "{f}:1:", ["field 'prompt': expected text"]),
    # ---- judgments
    Case(
        "judgments_bad_winner.jsonl", ["arena", "{f}", "--out", "{tmp}/arena"], "{f}:2:", ["field 'winner'"]
    ),
    Case(
        "judgments_missing_model_b.jsonl",
        ["arena", "{f}", "--out", "{tmp}/arena"],
        "{f}:1:",
        ["field 'model_b': missing"],
    ),
    Case(
        "judgments_self_battle.jsonl",
        ["arena", "{f}", "--out", "{tmp}/arena"],
        "{f}:2:",
        ["field 'model_b':", "same as model_a"],
    ),
    # ---- task files
    Case(
        "task_template_variable_missing.yaml",
        EVAL,
        "Task file {f}",
        ["ok_task_rows.jsonl:1: field 'question'"],
    ),
    Case("task_unknown_metric.yaml", EVAL, "Task file {f}", ["unknown metric 'exactly'"]),
    Case("task_unknown_key.yaml", EVAL, "{f}", ["unknown key 'metric'", "'metrics'"]),
    Case("task_unbalanced_brace.yaml", EVAL, "Task file {f}", ["field 'template'", "doubled"]),
    Case("task_data_missing.yaml", EVAL, "Task file {f}", ["no_such_rows.jsonl: does not exist"]),
    # ---- config files
    Case("cfg_broken_yaml.yaml", CONFIG, "{f}", ["not valid YAML", "line 4"]),
    Case("cfg_unknown_key.yaml", CONFIG, "{f}", ["unknown key 'train.lrr'", "Did you mean 'train.lr'?"]),
    Case("cfg_wrong_type.yaml", CONFIG, "{f}", ["'train.batch_size'", "'eight'"]),
    Case("cfg_negative_lr.yaml", CONFIG, "{f}", ["'train.lr': input should be greater than 0"]),
    Case(
        "cfg_batch_size_zero.yaml",
        CONFIG,
        "{f}",
        ["'train.batch_size': input should be greater than or equal to 1"],
    ),
    Case("cfg_model_is_a_file.yaml", CONFIG, "Model 'ok_pairs.jsonl'", ["is a file, not a model folder"]),
    Case(
        "cfg_model_empty_string.yaml",
        CONFIG,
        "{f}",
        ["'model.name': string should have at least 1 character"],
    ),
    Case(
        "cfg_out_is_a_file.yaml",
        ["sft", "{f}", "data.train=ok_pairs.jsonl"],
        "{f}",
        ["'out': value error, out=ok_pairs.jsonl is a file"],
    ),
    Case("cfg_duplicate_key.yaml", CONFIG, "{f}", ["'train.lr' appears twice (line 3 and line 5)"]),
    Case("cfg_not_utf8.yaml", CONFIG, "{f}", ["is not UTF-8 (line 3"]),
    Case("cfg_a_list.yaml", CONFIG, "{f}", ["must hold a mapping of keys, not list"]),
    Case("cfg_resume_not_a_checkpoint.yaml", CONFIG, "resume=.", ["not a complete checkpoint folder"]),
    Case("cfg_bom.yaml", CONFIG, "{tmp}/run", ["done:"], accepted=True),
    Case("cfg_crlf.yaml", CONFIG, "{tmp}/run", ["done:"], accepted=True),
]


def squeeze(text: str) -> str:
    """Text without spaces and table rules: rich wraps long lines at spaces or inside a path."""
    return "".join(c for c in text if not c.isspace() and c not in "│┃|")


def test_every_file_of_the_corpus_has_a_case():
    files = {p.name for p in BAD.iterdir()} - HELPERS
    assert files == {c.file for c in CASES} - {"pairs_10mb_line.jsonl"}
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.file for c in CASES])
def test_bad_input_is_refused_naming_file_and_line_or_key(case, cli, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(BAD)  # configs and task files name their neighbours by relative paths
    monkeypatch.setattr("tunelab.train.lifecycle.make_plots", lambda run_dir: [])  # accepted configs train a step
    path = case.file
    if case.file == "pairs_10mb_line.jsonl":  # too big to commit: one line of 10 MB, never closed
        path = str(tmp_path / case.file)
        Path(path).write_text('{"prompt": "' + "x" * 10_000_000)
    code, out, err = cli(*[a.format(f=path, tmp=tmp_path) for a in case.argv])
    message = squeeze(out + err)
    assert (code == 0) if case.accepted else (code != 0), message
    if not case.accepted:
        assert len(message) < 2000  # one paragraph; never the bad input itself
    for piece in [case.where.format(f=path, tmp=tmp_path), *case.says]:
        assert squeeze(piece) in message, f"{piece!r} not in {out + err!r}"


def test_rows_that_are_only_warnings_are_counted_in_the_report(cli, tmp_path, one_thread):
    rows = [{"prompt": "cat", "completion": "chat"}, {"prompt": "dog", "completion": "chien"}] * 2
    rows += [{"prompt": "a long one", "completion": "word " * 100}] * 3  # longer than train.max_len
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for overlong, counted in [
        ("drop", "7 (3 dropped, 0 truncated as too long)"),
        ("truncate", "7 (0 dropped, 3 truncated"),
    ]:
        run = tmp_path / overlong
        code, _, err = cli(
            *SFT,
            f"data.train={path}",
            f"data.overlong={overlong}",
            "train.max_len=64",
            "train.max_steps=1",
            "train.batch_size=2",
            f"out={run}",
        )
        assert code == 0, err
        assert f"train rows: {counted}" in (run / "report.md").read_text()
