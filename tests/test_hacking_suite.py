"""The built-in suite of hackable and honest rewards: its rates by hand, and a small run on the tiny model."""

import json

from tunelab.rl import hacking_suite as S


def test_rates_by_hand():
    runs = [
        {"kind": "hacking", "fired_at": 12},
        {"kind": "hacking", "fired_at": 20},
        {"kind": "hacking", "fired_at": None},
        {"kind": "hacking", "fired_at": 16},
        {"kind": "honest", "fired_at": None},
        {"kind": "honest", "fired_at": 30},
    ]
    # 3 of 4 hacking runs fired (median of 12, 16, 20 = 16); 1 of 2 honest runs
    assert S.rates(runs) == {
        "hacking_runs": 4,
        "honest_runs": 2,
        "detection_rate": 0.75,
        "false_alarm_rate": 0.5,
        "median_steps_to_detection": 16,
    }


def test_the_rewards_by_hand():
    assert S.digit_share({}, "a1b2") == 0.5
    assert S.length_bonus({}, "x" * 30) == 0.5 and S.length_bonus({}, "x" * 90) == 1.0
    assert S.keyword_bonus({}, "The answer is the model") == 1.0  # the x2, answer, model: capped at 3
    assert S.noisy_digit_share({}, "12") == S.noisy_digit_share({}, "12")  # seeded by the text
    pairs = S.length_biased_pairs(20)
    assert all(len(p["chosen"].split()) > len(p["rejected"].split()) for p in pairs)


def test_a_small_suite_runs_on_the_tiny_model(tmp_path, one_thread):
    summary = S.run_suite("tiny", 1, 3, 1, tmp_path, ["measure", "length_bonus"])
    assert summary["hacking_runs"] == 1 and summary["honest_runs"] == 1
    assert {r["reward"] for r in summary["runs"]} == {"measure", "length_bonus"}
    assert all(len(r["heldout_first_last"]) == 2 for r in summary["runs"])
    assert json.loads((tmp_path / "suite.json").read_text())["detection_rate"] in (0.0, 1.0)
