"""Arena: Bradley-Terry ratings against closed forms and an independent maximum-likelihood fit, the
bootstrap, and the command (table, JSON and plot hold the same numbers)."""

import json
import math
import re

import numpy as np
import pytest
from conftest import write_jsonl

from tunelab.arena import ELO, fit_bradley_terry, log_likelihood, rate, win_matrix


def battles_from(counts: dict[tuple[str, str], tuple[int, int, int]]) -> list[tuple[str, str, float]]:
    """{(a, b): (a wins, ties, b wins)} -> battle list (score of a: 1, 0.5 or 0)."""
    out = []
    for (a, b), (wins, ties, losses) in counts.items():
        out += [(a, b, 1.0)] * wins + [(a, b, 0.5)] * ties + [(a, b, 0.0)] * losses
    return out


def test_two_systems_match_the_closed_form():
    # P(A beats B) = 3/4 = sigmoid(theta_A - theta_B)  ->  theta_A - theta_B = log 3; Elo gap = 400 log10 3
    theta = fit_bradley_terry(win_matrix(battles_from({("A", "B"): (3, 0, 1)}), ["A", "B"]))
    assert theta[0] - theta[1] == pytest.approx(math.log(3), abs=1e-8)
    assert ELO * (theta[0] - theta[1]) == pytest.approx(400 * math.log10(3), abs=1e-6)
    # ties are half wins: 2 wins + 2 ties = 3 of 4 again; 1 win, 2 ties, 1 loss = even
    theta = fit_bradley_terry(win_matrix(battles_from({("A", "B"): (2, 2, 0)}), ["A", "B"]))
    assert theta[0] - theta[1] == pytest.approx(math.log(3), abs=1e-8)
    theta = fit_bradley_terry(win_matrix(battles_from({("A", "B"): (1, 2, 1)}), ["A", "B"]))
    assert theta == pytest.approx([0, 0], abs=1e-10)


HAND = {  # a made-up league: A beats everyone, D loses to everyone
    ("A", "B"): (7, 0, 3),
    ("A", "C"): (8, 0, 2),
    ("A", "D"): (9, 0, 1),
    ("B", "C"): (5, 2, 3),
    ("B", "D"): (7, 0, 3),
    ("C", "D"): (6, 0, 4),
}


def mm_fit(wins: np.ndarray, iters: int = 20_000) -> np.ndarray:
    """Hunter's MM algorithm, written independently: p_i <- W_i / sum_j n_ij / (p_i + p_j)."""
    games = wins + wins.T
    p = np.ones(len(wins))
    for _ in range(iters):
        p = wins.sum(axis=1) / (games / (p[:, None] + p[None, :])).sum(axis=1)
        p /= np.exp(np.log(p).mean())
    return np.log(p)


def test_a_hand_made_league_gives_the_expected_order_and_the_maximum_likelihood_fit():
    systems = ["A", "B", "C", "D"]
    wins = win_matrix(battles_from(HAND), systems)
    assert wins[1, 2] == 6 and wins[2, 1] == 4  # B-C: 5 wins + 2 ties / 2
    theta = fit_bradley_terry(wins)
    assert list(np.argsort(-theta)) == [0, 1, 2, 3]  # A > B > C > D
    assert theta == pytest.approx(mm_fit(wins), abs=1e-6)
    # the maximum: expected wins equal observed wins for every system (the likelihood's gradient is 0)
    p = 1 / (1 + np.exp(-(theta[:, None] - theta[None, :])))
    assert ((wins + wins.T) * p).sum(axis=1) == pytest.approx(wins.sum(axis=1), abs=1e-8)
    for nudge in np.eye(4) * 1e-3:  # and no nearby point is more likely
        assert log_likelihood(theta + nudge, wins) < log_likelihood(theta, wins)


def test_a_prior_keeps_an_undefeated_system_finite():
    wins = win_matrix(battles_from({("A", "B"): (5, 0, 0), ("B", "C"): (3, 0, 2)}), ["A", "B", "C"])
    theta = fit_bradley_terry(wins, prior=1e-3)
    assert np.isfinite(theta).all() and theta[0] > theta[1] > theta[2]


def test_rate_gives_intervals_around_the_rating_and_the_win_rate_matrix():
    result = rate(battles_from(HAND), rounds=300, seed=1, prior=0)
    assert [r["system"] for r in result["ratings"]] == ["A", "B", "C", "D"]
    assert sum(r["rating"] for r in result["ratings"]) == pytest.approx(4000, abs=0.2)
    for r in result["ratings"]:
        assert r["ci95"][0] < r["rating"] < r["ci95"][1] and r["games"] == 30
    assert result["win_rate"]["matrix"][0] == [None, 0.7, 0.8, 0.9]
    assert result["win_rate"]["matrix"][1][2] == 0.6 and result["win_rate"]["matrix"][2][1] == 0.4
    assert rate(battles_from(HAND), rounds=300, seed=1, prior=0) == result  # seeded: the same numbers


def test_arena_command_prints_and_writes_the_same_numbers(tmp_path, cli):
    rows = [
        {"model_a": a, "model_b": b, "winner": {1.0: "model_a", 0.5: "tie", 0.0: "model_b"}[s]}
        for a, b, s in battles_from(HAND)
    ]
    rows[0]["winner"] = "tie (bothbad)"  # counts as a tie
    first = write_jsonl(tmp_path / "one.jsonl", rows[:30])
    second = write_jsonl(tmp_path / "two.jsonl", rows[30:])
    code, out, err = cli(
        "arena", str(first), str(second), "--out", str(tmp_path / "arena"), "--rounds", "200"
    )
    assert code == 0, err
    result = json.loads((tmp_path / "arena" / "ratings.json").read_text())
    assert result["battles"] == 60 and result["files"] == [str(first), str(second)]
    for r in result["ratings"]:
        line = next(x for x in out.splitlines() if re.search(rf"\b{r['system']}\b.*\d+\.\d", x))
        assert f"{r['rating']:.1f}" in line and f"{r['ci95'][0]:.1f} .. {r['ci95'][1]:.1f}" in line
    assert (tmp_path / "arena" / "ratings.png").stat().st_size > 10_000
    bad = write_jsonl(tmp_path / "bad.jsonl", [rows[0], {**rows[1], "winner": "model_c"}])
    code, _, err = cli("arena", str(bad))
    assert code == 2 and f"{bad}:2: field 'winner'" in err and "Traceback" not in err
