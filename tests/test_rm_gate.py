"""The reward-model quality gate: each null baseline by hand, the verdict's rule, and the gate at work
on a tiny reward model trained on length-biased pairs (flagged; --strict refuses). The good reward
model's verdict is tested in test_rm.py, on the reward model trained there."""

import json
import math
import random

import numpy as np
import pytest
from conftest import write_jsonl

from tunelab.config import load_config
from tunelab.config.schema import RMConfig
from tunelab.errors import TunelabError
from tunelab.models import rm_gate as G


def pair(chosen, rejected, prompt="q"):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


HELD = [pair("aaaa", "b"), pair("cc", "ddd"), pair("e", "f"), pair("good one", "bad one")]


def test_length_baselines_by_hand():
    # lengths chosen 4, 2, 1, 8 vs rejected 1, 3, 1, 7: longer wins, loses, ties, wins
    inputs = G.GateInputs([], np.array([True, False, True, True]))
    assert G.longer_answer(HELD, inputs).tolist() == [1.0, 0.0, 0.5, 1.0]  # mean 2.5 / 4 = 0.625
    assert G.shorter_answer(HELD, inputs).tolist() == [0.0, 1.0, 0.5, 0.0]  # mean 0.375
    # first shown: right exactly when the chosen answer was shown first: 3 of 4
    assert G.first_shown(HELD, inputs).tolist() == [1.0, 0.0, 1.0, 1.0]


def test_bag_of_words_baseline_by_hand():
    # trained on pairs where "good" is chosen and "bad" rejected (same number of words: length says nothing)
    train = [pair("good answer", "bad answer"), pair("good", "bad"), pair("so good", "so bad")]
    inputs = G.GateInputs(train, np.array([True, True, True]))
    held = [pair("good day", "bad day"), pair("bad x", "good x"), pair("hello", "world")]
    # right, wrong, and a tie (no known word, equal word counts: both score 0)
    assert G.bag_of_words(held, inputs).tolist() == [1.0, 0.0, 0.5]


def test_ece_and_length_correlation_by_hand():
    # sigmoid(0) = 0.5 in one bin, observed 1 and 0 -> mean 0.5: perfectly calibrated
    assert G.ece(np.array([0.0, 0.0]), np.array([True, False])) == pytest.approx(0.0)
    # sigmoid(ln 3) = 0.75 predicted, the first was chosen: |0.75 - 1| = 0.25
    assert G.ece(np.array([math.log(3)]), np.array([True])) == pytest.approx(0.25)
    # scores equal to the lengths: r = 1; equal lengths: undefined
    pairs = [pair("a", "bbb"), pair("aa", "bbbb")]
    assert G.length_correlation(pairs, [1, 2], [3, 4]) == pytest.approx(1.0)
    assert G.length_correlation([pair("a", "b")], [1.0], [0.0]) is None


def test_model_credit_counts_ties_as_half():
    # r_chosen [1, 0, 2, 2] vs r_rejected [0, 1, 2, 1]: right, wrong, tie, right -> 2.5 / 4
    assert G.credit(np.array([1, 0, 2, 2]), np.array([0, 1, 2, 1])).mean() == pytest.approx(0.625)


def test_the_verdict_rule():
    rng = random.Random(0)
    # 200 pairs of equal-length answers that the model ranks right: every null baseline is at chance
    same_length = [pair(str(rng.randint(0, 9)), str(rng.randint(0, 9))) for _ in range(200)]
    good = G.gate(same_length, [1.0] * 200, [0.0] * 200, same_length[:50])
    assert good["passed"] and good["accuracy"]["mean"] == 1.0
    assert good["baselines"]["longer answer"]["mean"] == 0.5
    assert good["baselines"][good["best_baseline"]]["difference"]["low"] > 0
    # chosen always longer and a model that scores length: it only equals the 'longer answer' baseline
    longer = [pair("x" * rng.randint(5, 9), "y" * rng.randint(1, 4)) for _ in range(200)]
    lengthy = G.gate(longer, [len(p["chosen"]) for p in longer], [len(p["rejected"]) for p in longer], [])
    assert not lengthy["passed"] and lengthy["best_baseline"] == "longer answer"
    assert "'longer answer'" in lengthy["reason"] and lengthy["length_correlation"] > 0.8
    # 10 pairs cannot pass even when all are right: the interval of the difference reaches 0
    few = G.gate(same_length[:10], [1.0] * 10, [0.0] * 10, [])
    assert few["accuracy"]["mean"] == 1.0 and few["pairs"] == 10
    assert "| reward model |" in G.markdown(good)


def test_check_before_use_warns_refuses_or_says_unchecked(tmp_path):
    (tmp_path / "final").mkdir()
    verdict = {"passed": False, "reason": "worse than 'longer answer'", "length_correlation": 0.9}
    (tmp_path / "final" / "gate.json").write_text(json.dumps(verdict))
    said = []
    G.check_before_use(str(tmp_path / "final"), strict=False, use="score", warn=said.append)
    assert "did not pass" in said[0] and "longer answer" in said[0] and "r = +0.90" in said[0]
    with pytest.raises(TunelabError, match="Refusing to use it for select"):
        G.check_before_use(str(tmp_path / "final"), strict=True, use="select")
    bare = tmp_path / "bare"
    bare.mkdir()
    said = []
    assert G.check_before_use(str(bare), strict=False, use="score", warn=said.append) is None
    assert "no quality-gate verdict" in said[0]
    with pytest.raises(TunelabError, match="no quality-gate verdict"):
        G.check_before_use(str(bare), strict=True, use="score")


# ---------------------------------------------------------------- tiny reward models


def length_biased(n, seed=0):
    """The longer answer always wins, whatever it says."""
    rng = random.Random(seed)
    digits = lambda k: "".join(rng.choice("0123456789") for _ in range(k))  # noqa: E731
    return [
        pair(digits(rng.randint(4, 6)), digits(rng.randint(1, 2)), f"{rng.randint(0, 9)}?") for _ in range(n)
    ]


def train_rm(tmp, name, rows, *extra):
    from tunelab.stages import rm

    data = write_jsonl(tmp / f"{name}.jsonl", rows)
    cfg = load_config(
        RMConfig,
        None,
        [
            "model=tiny:llama",
            f"data.train={data}",
            f"out={tmp / name}",
            "adapter=none",
            "data.eval_split=0.25",
            "train.batch_size=16",
            "train.lr=1e-3",
            "train.warmup=0.05",
            "rm_gate.resamples=500",
            *extra,
        ],
    )
    return rm.main(cfg)


@pytest.fixture(scope="module")
def biased_rm(tmp_path_factory):
    return train_rm(tmp_path_factory.mktemp("gate"), "biased", length_biased(160), "train.epochs=4")


def test_the_gate_flags_a_length_biased_reward_model(biased_rm):
    verdict = json.loads((biased_rm / "gate.json").read_text())
    assert not verdict["passed"] and verdict["best_baseline"] == "longer answer"
    assert verdict["baselines"]["longer answer"]["mean"] == 1.0
    assert "NOT PASSED" in (biased_rm / "report.md").read_text()


def test_strict_refuses_and_the_default_warns(biased_rm, tmp_path, cli):
    rows = write_jsonl(tmp_path / "answers.jsonl", [{"prompt": "1?", "completion": "12345"}])
    code, out, err = cli("score", str(biased_rm / "final"), str(rows))
    assert code == 0 and "did not pass its quality gate" in err and "'longer answer'" in err
    code, out, err = cli("score", str(biased_rm / "final"), str(rows), "--strict")
    assert code == 2 and "Refusing to use it for score" in err and "Traceback" not in err


def test_eval_best_of_n_reports_itself_against_greedy_and_random(biased_rm, tmp_path, cli):
    code, out, err = cli(
        "eval",
        "model=tiny:llama",
        "task=extract",
        "strategy=best_of_n",
        f"prompting.rm={biased_rm / 'final'}",
        "eval.limit=2",
        "prompting.samples=2",
        "prompting.max_new_tokens=4",
        f"out={tmp_path / 'eval'}",
    )
    assert code == 0, err
    assert "did not pass its quality gate" in err  # warned before use
    check = json.loads((tmp_path / "eval" / "best_of_n_check.json").read_text())
    assert check["rows"] == 2 and check["gate"]["passed"] is False
    assert {"best_of_n", "greedy", "random_pick", "oracle", "verdict"} <= set(check)
    assert "## Best-of-n checked" in (tmp_path / "eval" / "report.md").read_text()
    code, out, err = cli(
        "eval",
        "model=tiny:llama",
        "task=extract",
        "strategy=best_of_n",
        f"prompting.rm={biased_rm / 'final'}",
        "prompting.rm_strict=true",
        "eval.limit=2",
        f"out={tmp_path / 'eval2'}",
    )
    assert code == 2 and "Refusing to use it for best_of_n" in err


def test_rm_gate_strict_refuses_in_sft_reward_eval_and_in_rl(biased_rm, tmp_path):
    from tunelab.config.schema import RLConfig, SFTConfig
    from tunelab.stages import rl, sft

    pairs = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": f"{i}?", "completion": str(i)} for i in range(8)])
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"{i}?"} for i in range(4)])
    strict = ["model=tiny:llama", "rm_gate.strict=true", f"out={tmp_path / 'run'}"]
    sft_cfg = load_config(
        SFTConfig,
        None,
        [
            *strict,
            f"data.train={pairs}",
            f"reward_eval.rm={biased_rm / 'final'}",
            f"reward_eval.prompts={prompts}",
            "train.eval_every=1",
        ],
    )
    with pytest.raises(TunelabError, match="Refusing to use it for reward_eval"):
        sft.main(sft_cfg)
    rl_cfg = load_config(
        RLConfig, None, [*strict, f"data.train={prompts}", f"reward=rm:{biased_rm / 'final'}"]
    )
    with pytest.raises(TunelabError, match="Refusing to use it for reward=rm: in RL"):
        rl.main(rl_cfg)
