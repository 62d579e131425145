"""Metrics by hand, task files and their errors, the bootstrap, the judge, and `tunelab eval` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_jsonl

from tunelab.errors import DataError, TunelabError
from tunelab.eval.judge import combine, pairwise, summarize
from tunelab.eval.stats import bootstrap_ci
from tunelab.prompting.lm import Reply
from tunelab.tasks.metrics import (
    after_marker,
    extractor,
    first_json,
    json_equal,
    multiple_choice,
    normalized,
    numeric,
    rouge_l,
)
from tunelab.tasks.task import load_task


def test_rouge_l_by_hand():
    # normalised: "cat sat on mat" vs "cat on mat"; LCS 3 -> P 3/4, R 3/3, F1 = 2 * .75 * 1 / 1.75
    assert rouge_l("The cat sat on the mat.", "the cat on the mat") == pytest.approx(2 * 0.75 / 1.75)
    assert rouge_l("dog", "cat") == 0.0
    assert rouge_l("", "") == 1.0


def test_metrics_by_hand():
    assert normalized("  The PARIS. ", "paris") == 1.0
    assert numeric("about 3.1400 km", "3.14") == 1.0 and numeric("3.2", "3.14", tolerance=0.05) == 0.0
    assert numeric("no number", "3") == 0.0
    assert multiple_choice("(B) because it is", "B") == 1.0 and multiple_choice("C.", "B") == 0.0
    assert json_equal('{"b": 2, "a": 1}', '{"a":1,"b":2}') == 1.0 and json_equal("{bad", "{}") == 0.0


def test_extractors():
    assert first_json('Sure!\n```json\n{"a": [1, 2]}\n```') == '{"a": [1, 2]}'
    assert first_json("{ not json } then [3]") == "[3]"
    assert after_marker("thinking... Final answer: 42.") == "42"
    assert extractor("regex:color=(\\w+)")("color=red, color=blue") == "blue"
    assert extractor("last_line")("a\nb\n\n") == "b"
    assert extractor("number")("it costs 12 dollars, not 12.50") == "12.5"


def test_bootstrap_interval():
    assert bootstrap_ci([1.0] * 20) == (1.0, 1.0, 1.0)
    mean, low, high = bootstrap_ci([0, 1] * 50, seed=3)
    assert mean == 0.5 and 0.38 < low < 0.5 < high < 0.62  # normal approx: 0.5 +- 1.96 * 0.05
    assert bootstrap_ci([0, 1, 1], seed=3) == bootstrap_ci([0, 1, 1], seed=3)


def test_judge_counts_a_verdict_only_when_both_orders_agree():
    assert combine("A", "B") == "a" and combine("B", "A") == "b"
    assert combine("A", "A") == "tie" and combine(None, "B") == "tie"

    class FirstSlotJudge:  # always picks whatever is shown first
        def complete(self, conversations, *, max_new_tokens, temperature=0.0, seed=0):
            return [Reply("A", 1, 1) for _ in conversations]

    verdicts = pairwise(FirstSlotJudge(), [("q", "x", "y")] * 4)
    assert summarize(verdicts) == {
        "n": 4,
        "a": 0,
        "b": 0,
        "tie": 4,
        "agreement": 0.0,
        "first_slot_rate": 1.0,
        "unparsed": 0,
    }

    class LongerJudge:  # picks the longer answer, whatever its slot
        def complete(self, conversations, *, max_new_tokens, temperature=0.0, seed=0):
            out = []
            for c in conversations:
                text = c[0]["content"]
                a = text.split("Answer A:\n")[1].split("\n\nAnswer B:")[0]
                b = text.split("Answer B:\n")[1].split("\n\nWhich")[0]
                out.append(Reply("A" if len(a) > len(b) else "B", 1, 1))
            return out

    s = summarize(pairwise(LongerJudge(), [("q", "long answer", "no"), ("q", "x", "longer")]))
    assert (s["a"], s["b"], s["tie"], s["agreement"], s["first_slot_rate"]) == (1, 1, 0, 1.0, 0.5)


def write_task(tmp_path, template="Q: {question}", rows=None, **extra):
    rows = rows or [{"question": f"what is {i}+{i}", "answer": str(2 * i)} for i in range(8)]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    lines = [f"template: {json.dumps(template)}", f"data: {{train: {data.name}, eval_split: 0.25}}"]
    lines += [f"{k}: {json.dumps(v)}" for k, v in extra.items()]
    path = tmp_path / "task.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_task_file_splits_and_scores(tmp_path):
    task = load_task(str(write_task(tmp_path, metrics=["numeric", "exact"], extract="number")))
    assert (len(task.train), len(task.eval)) == (6, 2)
    row = task.eval[0]
    assert task.prompt(row) == f"Q: {row['question']}"
    assert task.score(task.answer(f"I think {row['answer']}.0"), row) == {"numeric": 1.0, "exact": 1.0}


def test_a_missing_template_variable_names_the_file_line_and_field(tmp_path):
    rows = [{"question": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}]
    with pytest.raises(
        DataError, match=r"rows.jsonl:2: field 'question': missing: the template uses \{question\}"
    ):
        load_task(str(write_task(tmp_path, rows=rows)))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"template": 'JSON like {"a": {question}}'}, "literal braces"),
        ({"metrics": ["accuracy"]}, "unknown metric 'accuracy'"),
        ({"extract": "xml"}, "unknown extract 'xml'"),
        ({"templat": "x"}, "Did you mean 'template'"),
    ],
)
def test_bad_task_files_are_clear_errors(tmp_path, extra, message):
    with pytest.raises(TunelabError, match=message):
        load_task(str(write_task(tmp_path, **extra)))


def test_unknown_task_lists_the_built_in_ones():
    with pytest.raises(TunelabError, match="built-in tasks \\(extract"):
        load_task("no-such-task")


def test_reasoning_gym_task_uses_its_own_scorer():
    pytest.importorskip("reasoning_gym")
    task = load_task("reasoning_gym:basic_arithmetic", size=4)
    row = task.eval[0]
    assert len(task.eval) == 4 and task.train
    assert task.score(task.answer(f"Let me see. Answer: {row['answer']}"), row) == {"gym": 1.0}
    assert task.score(task.answer("Answer: banana"), row) == {"gym": 0.0}
    assert (
        load_task("reasoning_gym:basic_arithmetic", size=4).eval[0]["prompt"] == row["prompt"]
    )  # fixed seed


@pytest.mark.parametrize("model", ["tiny:llama", "tiny:gpt2"])  # a chat template, and none
def test_eval_cli_writes_a_table_intervals_and_outputs(cli, tmp_path, model):
    task = write_task(tmp_path, rules=["Answer with a number."], extract="number", metrics=["numeric"])
    out = tmp_path / "ev"
    code, stdout, err = cli(
        "eval",
        f"model={model}",
        f"task={task}",
        "strategy=[zero_shot,rules,few_shot,cot]",
        "prompting.cot_max_new_tokens=8",
        "prompting.max_new_tokens=4",
        f"out={out}",
    )
    assert code == 0, err
    assert "numeric (95% CI)" in stdout and "few_shot" in stdout
    results = json.loads((out / "results.json").read_text())
    assert [r["strategy"] for r in results["results"]] == ["zero_shot", "rules", "few_shot", "cot"]
    for r in results["results"]:
        m = r["metrics"]["numeric"]
        assert m["low"] <= m["mean"] <= m["high"] and r["n"] == 2 and r["tokens_per_example"] > 0
    rows = [json.loads(line) for line in (out / "outputs" / "few_shot.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["shots"] == 4 and rows[0]["prompt"].startswith("Q: what is")
    assert (out / "report.md").read_text().count("|") > 10 and (out / "config.yaml").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["strategy=telepathy"], "strategy"),
        (["strategy=few_shot", "prompting.max_context=16"], "too small for even the question"),
        (["strategy=rules"], "has no rules"),
        (["task=missing.yaml"], "does not exist"),
    ],
)
def test_eval_cli_bad_input_is_one_clear_message(cli, tmp_path, args, message):
    task = write_task(tmp_path)
    code, _, err = cli("eval", "model=tiny:llama", f"task={task}", f"out={tmp_path / 'ev'}", *args)
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "path", sorted(str(p) for p in Path(__file__).parents[1].glob("examples/tasks/*.yaml"))
)
def test_example_task_files_load_and_score_their_references(path):
    task = load_task(path)
    assert task.train and task.eval
    for row in task.eval[:5]:  # the reference, written as a model would, gets full marks
        assert task.score(task.answer(f"{task.reference(row)}"), row)[task.metric] == 1.0
