"""Best-of-n that checks itself: the reward model's pick vs greedy vs a random pick, by hand."""

from types import SimpleNamespace

import pytest

from tunelab.eval.bon_check import best_of_n_check, check_line, compare
from tunelab.tasks.task import Task


def test_compare_by_hand():
    # 4 rows; the pick is right on rows 1, 3, 4; greedy on 1, 2, 4; the samples (n = 2) as listed
    check = compare([1, 0, 1, 1], [1, 1, 0, 1], [[1, 0], [0, 0], [1, 0], [1, 1]], resamples=200)
    # a random pick scores the mean of its row's samples: 0.5, 0, 0.5, 1 -> 0.5; the oracle 1, 0, 1, 1 -> 0.75
    assert check["best_of_n"] == 0.75 and check["greedy"] == 0.75
    assert check["random_pick"] == 0.5 and check["oracle"] == 0.75
    assert check["vs_greedy"]["mean"] == 0.0 and check["vs_random_pick"]["mean"] == 0.25
    assert check["verdict"] == "unclear"  # 4 rows: the intervals reach 0


def test_a_pick_worse_than_greedy_hurts_and_one_better_than_both_helps():
    # 40 rows: the reward model picks the wrong one of [right, wrong] where greedy is right
    hurts = compare([0] * 40, [1] * 40, [[1, 0]] * 40, resamples=200)
    assert hurts["verdict"] == "hurts" and hurts["vs_greedy"]["high"] == -1.0
    helps = compare([1] * 40, [0] * 40, [[1, 0]] * 40, resamples=200)
    assert helps["verdict"] == "helps" and helps["vs_random_pick"]["low"] == 0.5


def test_best_of_n_check_reads_the_samples_from_the_harness_records(tmp_path):
    task = Task(name="qa", train=[], eval=[], template="Q: {prompt}")
    rows = [{"prompt": "2+2", "answer": "4"}, {"prompt": "1+1", "answer": "2"}]
    trace = lambda *texts: [{"step": "sample", "text": t} for t in texts] + [{"step": "rewards", "text": []}]  # noqa: E731
    metric = task.metric
    bon = SimpleNamespace(
        rows=[
            {"scores": {metric: 0.0}, "trace": trace("5", "4", "4")},  # the pick was "5"
            {"scores": {metric: 1.0}, "trace": trace("2", "3", "3")},
        ]
    )
    greedy = SimpleNamespace(rows=[{"scores": {metric: 1.0}}, {"scores": {metric: 1.0}}])
    (tmp_path / "gate.json").write_text('{"passed": false, "reason": "not better than \'longer answer\'"}')
    check = best_of_n_check(task, rows, bon, greedy, rm=str(tmp_path))
    # random pick: row 1 two of three samples right (2/3), row 2 one of three (1/3) -> 0.5
    assert check["best_of_n"] == 0.5 and check["greedy"] == 1.0
    assert check["random_pick"] == pytest.approx(0.5) and check["oracle"] == 1.0
    assert check["gate"]["passed"] is False
    assert "vs greedy 1.000" in check_line(check) and "gate NOT passed" in check_line(check)
