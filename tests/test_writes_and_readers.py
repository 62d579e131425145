"""Every write fails cleanly, and no file can crash a reader (issue 21, items 5 and 6).

A failing write is made real the way tests/test_faults.py does it: the file-size limit is 0 bytes for
one call, so the kernel refuses the write (EFBIG, as ENOSPC would)."""

import os

import pytest
from conftest import write_jsonl
from test_faults import SFT, disk_full_during, one_paragraph, steps_logged
from test_train import PAIRS

from tunelab.data.read import check_dataset, records
from tunelab.errors import DataError, TunelabError

# ---------------------------------------------------------------- writes


@pytest.mark.parametrize("out", ["/sys/tunelab-run", "/proc/self/status/run", "{tmp}/a-file/run"])
def test_out_that_cannot_be_written_is_refused_before_any_model_loads(tmp_path, cli, monkeypatch, out):
    from tunelab.stages import common

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before out= was checked")

    monkeypatch.setattr(common, "prepare_model", no_model)
    (tmp_path / "a-file").write_text("x")
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    code, _, err = cli(*SFT, f"data.train={data}", f"out={out.format(tmp=tmp_path)}")
    message = one_paragraph(err)
    assert code == 2 and "'out':" in message
    assert "cannot write in" in message or "is not a folder" in message


def test_a_full_disk_while_logging_a_step_stops_clearly_and_resume_goes_on(
    tmp_path, cli, one_thread, monkeypatch
):
    from tunelab.train import log

    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(
            log.MetricsLog, "write", disk_full_during(log.MetricsLog.write, lambda s, row: row["step"] == 5)
        )
        code, _, err = cli(*SFT, f"data.train={data}", f"out={run}")
    message = one_paragraph(err)
    assert code == 2 and f"could not write the metrics log {run}/metrics.jsonl" in message
    assert f"The newest complete checkpoint is {run}/checkpoints/step-4" in message
    code, _, err = cli(*SFT, f"data.train={data}", f"out={run}")
    assert code == 0, err
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6]


def test_a_full_disk_while_writing_the_report_is_a_message_and_plots_only_warn(
    tmp_path, cli, one_thread, monkeypatch
):
    from tunelab.train import log, run_folder

    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    with monkeypatch.context() as patch:
        patch.setattr(log, "_make_plots", disk_full_during(log._make_plots, lambda *a: True))
        code, _, err = cli(*SFT, f"data.train={data}", f"out={tmp_path / 'a'}")
    assert code == 0 and "warning: could not write the plots" in err and "Traceback" not in err
    with monkeypatch.context() as patch:
        patch.setattr(run_folder, "write_report", disk_full_during(run_folder.write_report, lambda *a: True))
        code, _, err = cli(*SFT, f"data.train={data}", f"out={tmp_path / 'b'}")
    assert code == 2 and f"could not write the report {tmp_path / 'b'}/report.md" in one_paragraph(err)


def test_a_command_whose_output_cannot_be_written_says_so(tmp_path, cli):
    data = write_jsonl(tmp_path / "docs.jsonl", [{"text": "a document of several words, " * 20}])
    code, _, err = cli("data", "clean", str(data), "--out", "/sys/tunelab-clean")
    assert code == 2 and "/sys/tunelab-clean" in err and "Traceback" not in err


# ---------------------------------------------------------------- readers


def _problems(path, kind="pairs"):
    try:
        rows, problems = check_dataset(path, kind)
    except DataError as err:
        return [str(p) for p in err.problems]
    return [str(p) for p in problems]


@pytest.mark.parametrize(
    "content, says",
    [
        (
            '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + ', "completion": "x"}',
            "is nested too deeply to read",
        ),
        ('{"prompt": ' + "[" * 200 + "]" * 200 + ', "completion": "x"}', "is nested deeper than 64 levels"),
        ('{"prompt": "a", "completion": ' + "7" * 5000 + "}", "holds a number with thousands of digits"),
        ('{"prompt": "a\\ud800b", "completion": "x"}', "field 'prompt': holds '\\ud800', a lone surrogate"),
        ('{"prompt": "a", "completion": "x", "n\\udfffote": 1}', "a lone surrogate"),
        ('{"prompt": null, "completion": "x"}', "field 'prompt': is null (expected text)"),
        ('{"messages": [{"role": "user", "content": null}]}', "content': expected text, got null"),
    ],
    ids=["deep-100k", "deep-200", "huge-int", "surrogate", "surrogate-in-key", "null", "null-content"],
)
def test_rows_that_would_crash_a_reader_are_problems_with_file_and_line(tmp_path, content, says):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "fine", "completion": "row"}\n' + content + "\n")
    kind = "chat" if "messages" in content else "pairs"
    problems = _problems(path, kind)
    assert any(f"{path}:2:" in p and says in p for p in problems), problems
    json_path = tmp_path / "rows.json"
    json_path.write_text("[" + content + "]")
    assert _problems(json_path, kind)  # the same as one JSON document


def test_a_huge_integer_where_a_number_is_wanted_is_a_problem():
    from tunelab.data.read import normalise

    with pytest.raises(Exception, match="expected a finite number, got an integer of about 401 digits"):
        normalise("preference", {"prompt": "a", "chosen": "b", "rejected": "c", "margin": 10**400})


def test_special_files_are_refused_with_a_message(tmp_path):
    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)  # opening it would wait for a writer for ever
    for path, says in [
        (fifo, "is not a regular file"),
        ("/dev/zero", "is not a regular file"),
        (tmp_path, "is a folder"),
    ]:
        with pytest.raises(DataError, match=says):
            list(records(path))
    broken = tmp_path / "rows.jsonl.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 20)  # a gzip header and nothing after it
    with pytest.raises(DataError, match="cannot be read"):
        list(records(broken))


def test_a_reward_module_with_a_syntax_error_is_a_message(tmp_path, monkeypatch):
    from tunelab.rl.rewards import build_reward

    (tmp_path / "broken_reward.py").write_text("def score(example, completion):\n    return (1\n")
    (tmp_path / "raising_reward.py").write_text("raise ValueError('no key set')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TunelabError, match=r"broken_reward.py:2: .*syntax error in the reward module"):
        build_reward("broken_reward:score")
    with pytest.raises(TunelabError, match="importing raising_reward raised ValueError: no key set"):
        build_reward("raising_reward:score")


def test_a_corpus_shorter_than_one_block_is_a_message(tmp_path, cli, one_thread):
    short = tmp_path / "short.txt"
    short.write_text("just a few words\n")
    for steps in ([], ["train.max_steps=3"]):  # counted first, or met while training
        code, _, err = cli(
            "pretrain",
            "model=tiny:llama",
            f"data.train={short}",
            "train.max_len=512",
            *steps,
            f"out={tmp_path / 'r'}",
        )
        message = one_paragraph(err)
        assert code == 2 and str(short) in message and "fewer than" in message and "train.max_len" in message


def test_user_text_with_markup_reaches_the_console_as_it_is(tmp_path, cli):
    path = write_jsonl(tmp_path / "[bold]x[link=evil.example]y.jsonl", [{"prompt": "p", "completion": None}])
    code, out, err = cli("data", "check", str(path), "--model", "none", "--kind", "pairs")
    assert "Traceback" not in err and "[bold]x[link=evil.example]y.jsonl" in (out + err).replace("\n", "")


@pytest.mark.parametrize(
    "spec, says",
    [
        ("regex:[", "not a regular expression"),
        ([], "name at least one reward"),
        ([{"exact": 1.0}], "reward[0]: expected a reward name or {name: ..., weight: ...}"),
        ([1, 2], "reward[0]: expected a reward name"),
        ([{"name": "exact", "weight": float("nan")}], "weight must be a finite number"),
        ([{"name": "exact", "weight": 10**400}], "weight must be a finite number"),
        ([{"name": "exact", "weight": "heavy"}], "weight must be a finite number"),
        (":x", "reward ':x'"),
    ],
)
def test_a_reward_spec_that_cannot_work_is_a_message(spec, says):
    from tunelab.rl.rewards import build_reward

    with pytest.raises(TunelabError) as err:
        build_reward(spec)
    assert says in str(err.value)


@pytest.mark.parametrize(
    "setting, says",
    [
        ("lora.targets=[]", "'lora.targets': name at least one module"),
        (
            "lora.targets=[nonexistent]",
            "lora.targets: this model has no module ['nonexistent']; its linear layers:",
        ),
    ],
)
def test_lora_targets_the_model_lacks_are_a_message(tmp_path, cli, setting, says):
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    code, _, err = cli(*SFT, setting, f"data.train={data}", f"out={tmp_path / 'run'}")
    assert code == 2 and says in one_paragraph(err)


@pytest.mark.parametrize(
    "row", [{"instruction": None, "answer": "a"}, {"instruction": "q", "input": 3, "answer": "a"}]
)
def test_task_rows_with_a_null_or_non_text_instruction_are_problems(tmp_path, row):
    # found by tests/test_fuzz.py (TUNELAB_FUZZ_EXAMPLES=5000): {"instruction": null} raised TypeError
    from tunelab.tasks.task import task_rows

    path = write_jsonl(tmp_path / "rows.jsonl", [row])
    with pytest.raises(DataError, match="expected text, got"):
        task_rows(path, "{prompt}", "answer")
