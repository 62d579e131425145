"""Reward model: the Bradley-Terry loss by hand, learning a rule, invariance, and its four uses."""

import json
import math
import random
import subprocess
import sys

import pytest
import torch
from conftest import write_jsonl

from tunelab.config import load_config
from tunelab.config.schema import RMConfig, SFTConfig
from tunelab.errors import TunelabError
from tunelab.losses.preference import bradley_terry_loss
from tunelab.models.reward import last_token_index, rewards
from tunelab.stages import rm, sft


def test_bradley_terry_loss_by_hand():
    # r_w - r_l = 0.5 -> -log sigmoid(0.5) = log(1 + e^-0.5)
    assert bradley_terry_loss(torch.tensor([1.5]), torch.tensor([1.0])).item() == pytest.approx(
        math.log1p(math.exp(-0.5))
    )
    # margin 1: -log sigmoid(0.5 - 1) = log(1 + e^0.5); weight 2 doubles it
    got = bradley_terry_loss(
        torch.tensor([1.5]), torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([2.0])
    )
    assert got.item() == pytest.approx(2 * math.log1p(math.exp(0.5)))
    # centring 0.1: + 0.1 * (1.5 + 1.0)^2 = 0.625; two pairs are summed
    got = bradley_terry_loss(torch.tensor([1.5, 0.0]), torch.tensor([1.0, 0.0]), center=0.1)
    assert got.item() == pytest.approx(math.log1p(math.exp(-0.5)) + 0.625 + math.log(2))


def test_last_token_from_the_mask_for_both_padding_sides():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 3, 0]
    assert last_token_index(left).tolist() == [3, 3, 3]
    with pytest.raises(TunelabError, match="no real token"):
        last_token_index(torch.tensor([[0, 0]]))


def test_group_by_length_reaches_the_reward_model_batches():
    """data.group_by_length groups pairs (by their longer answer) as SFT groups rows; every pair still
    appears once per epoch, in a seeded order, and a resumed epoch skips exactly what was done."""
    from types import SimpleNamespace

    from tunelab.data.pairs import Pair

    lengths = [random.Random(i).choice([3, 40]) for i in range(64)]  # short pairs and long pairs
    pairs = [Pair([i] * n, [i] * (n - 1), float(i)) for i, n in enumerate(lengths)]
    tok = SimpleNamespace(pad_token_id=0)

    def epoch(group, start=0):
        cfg = load_config(RMConfig, None, ["train.batch_size=4", f"data.group_by_length={group}"])
        return list(rm.train_batches(pairs, tok, cfg).epoch(0, start))

    def padding(batches):
        return sum(b.seqs.input_ids.numel() - b.seqs.n_tokens for b in batches)

    plain, grouped = epoch(False), epoch(True)
    assert padding(grouped) < padding(plain) / 3
    assert sorted(float(m) for b in grouped for m in b.margin) == [float(i) for i in range(64)]  # each once
    assert all(
        torch.equal(a.seqs.input_ids, b.seqs.input_ids) for a, b in zip(grouped, epoch(True))
    )  # seeded
    assert [b.margin.tolist() for b in epoch(True, start=5)] == [b.margin.tolist() for b in grouped[5:]]
    assert [b.margin.tolist() for b in grouped] != sorted(b.margin.tolist() for b in grouped)  # shuffled


def sums(n, seed=0):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 4), rng.randint(0, 4)
        rows.append(
            {
                "prompt": f"{a}+{b}=",
                "chosen": str(a + b),
                "rejected": str(rng.choice([x for x in range(9) if x != a + b])),
            }
        )
    return rows


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory):
    """A tiny reward model trained on 'chosen answers are the correct sums'."""
    tmp = tmp_path_factory.mktemp("rm")
    data = write_jsonl(tmp / "sums.jsonl", sums(600))
    cfg = load_config(
        RMConfig,
        None,
        [
            "model=tiny:llama",
            f"data.train={data}",
            f"out={tmp / 'run'}",
            "adapter=none",
            "data.eval_split=0.2",
            "train.batch_size=16",
            "train.lr=1e-3",
            "train.epochs=10",
            "train.eval_every=100",
            "train.warmup=0.05",
        ],
    )
    return rm.main(cfg)


def test_reward_model_learns_the_rule_on_held_out_pairs(trained_rm):
    rows = [json.loads(x) for x in (trained_rm / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if "eval_accuracy" in r][-1]
    assert final["eval_accuracy"] >= 0.95 and final["eval_margin"] > 0
    assert (trained_rm / "plots" / "calibration.png").is_file()
    calib = json.loads((trained_rm / "calibration.json").read_text())
    assert calib["pairs"] == 120 and 0 <= calib["ece"] < 0.5
    assert "pairwise accuracy" in (trained_rm / "report.md").read_text()
    assert (
        trained_rm / "final" / "config.json"
    ).is_file()  # full fine-tuning: an HF sequence-classification model


def test_the_quality_gate_passes_a_good_reward_model(trained_rm):
    """Right sums vs wrong ones, all one character: the length baselines are at chance, and the
    bag-of-words baseline (which answers are common sums) is well beaten."""
    verdict = json.loads((trained_rm / "gate.json").read_text())
    assert verdict["passed"], verdict["reason"]
    assert verdict["pairs"] == 120 and verdict["train_pairs"] == 480
    assert verdict["baselines"]["longer answer"]["mean"] == 0.5
    assert json.loads((trained_rm / "final" / "gate.json").read_text()) == verdict  # travels with final/
    assert "## Reward-model gate: PASSED" in (trained_rm / "report.md").read_text()


def test_an_older_run_is_gated_on_the_fly_from_its_held_out_pairs(trained_rm, tmp_path):
    import shutil

    from tunelab.models.rm_gate import check_before_use

    old = tmp_path / "old"
    shutil.copytree(trained_rm, old, ignore=shutil.ignore_patterns("checkpoints"))
    (old / "gate.json").unlink()
    (old / "final" / "gate.json").unlink()  # as a run made before the gate existed
    verdict = check_before_use(str(old / "final"), strict=True, use="score")
    assert verdict["passed"] and verdict["pairs"] == 120


def test_scores_do_not_depend_on_batch_size_or_padding_side(trained_rm):
    from tunelab.models.scorer import RewardScorer

    scorer = RewardScorer(str(trained_rm / "final"))
    items = [
        (r["prompt"], r["chosen"] * (1 + i % 3)) for i, r in enumerate(sums(16, seed=3))
    ]  # different lengths
    one = RewardScorer(str(trained_rm / "final"), batch_size=1).score(items)
    seven = RewardScorer(str(trained_rm / "final"), batch_size=7).score(items)
    sixteen = scorer.score(items)
    assert one == pytest.approx(seven, abs=1e-5) and one == pytest.approx(sixteen, abs=1e-5)
    from tunelab.models.scorer import score

    assert score(str(trained_rm / "final"), items[:3]) == pytest.approx(
        one[:3], abs=1e-5
    )  # the module-level API
    # left padding, by hand
    seqs = [scorer.ids(it) for it in items]
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), scorer.tok.pad_token_id)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s) :] = torch.tensor(s)
        mask[i, T - len(s) :] = 1
    with torch.no_grad():
        left = rewards(scorer.model, ids, mask).tolist()
    # float rounding: 1.1e-5 of a score of 4.8 seen, and 1.1e-5 of 2.46 with another trained model
    assert left == pytest.approx(one, rel=3e-5, abs=1e-5)


def test_score_command_adds_rewards_and_accuracy(trained_rm, tmp_path):
    pairs = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": "2+2=", "completion": "4"}, {"prompt": "2+2=", "completion": "7"}]
    )
    out = subprocess.run(
        [sys.executable, "-m", "tunelab", "score", str(trained_rm / "final"), str(pairs)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    right, wrong = [json.loads(line)["reward"] for line in out.stdout.splitlines()]
    assert right > wrong
    prefs = write_jsonl(tmp_path / "pref.jsonl", sums(20, seed=7))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunelab",
            "score",
            str(trained_rm / "final"),
            str(prefs),
            "--out",
            str(tmp_path / "s.jsonl"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "pairwise accuracy" in out.stderr
    assert all("reward_chosen" in json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines())


def test_lora_reward_model_trains_head_and_adapter(tmp_path):
    data = write_jsonl(tmp_path / "sums.jsonl", sums(64))
    cfg = load_config(
        RMConfig,
        None,
        [
            "model=tiny:llama",
            f"data.train={data}",
            f"out={tmp_path / 'run'}",
            "adapter=lora",
            "train.max_steps=3",
            "train.batch_size=8",
        ],
    )
    run = rm.main(cfg)
    adapter_cfg = json.loads((run / "final" / "adapter_config.json").read_text())
    assert adapter_cfg["task_type"] == "SEQ_CLS" and "score" in (adapter_cfg.get("modules_to_save") or [])
    from tunelab.models.scorer import RewardScorer

    assert len(RewardScorer(str(run / "final")).score([("1+1=", "2")])) == 1


def test_a_finished_reward_model_run_rerun_as_it_was_adds_nothing_to_its_report(tmp_path):
    data = write_jsonl(tmp_path / "sums.jsonl", sums(40))
    args = ["model=tiny:llama", f"data.train={data}", f"out={tmp_path / 'run'}", "data.eval_split=0.2"]
    args += ["train.max_steps=2", "train.batch_size=8"]
    run = rm.main(load_config(RMConfig, None, args))
    report = (run / "report.md").read_text()
    assert report.count("## Reward model on held-out pairs") == 1
    rm.main(load_config(RMConfig, None, args))  # nothing to train: nothing may be rewritten or appended
    assert (run / "report.md").read_text() == report


def test_bad_reward_model_inputs(tmp_path):
    with pytest.raises(TunelabError, match="adapter=none, lora or dora"):
        rm.main(
            load_config(
                RMConfig,
                None,
                [
                    "model=tiny:llama",
                    f"data.train={write_jsonl(tmp_path / 'p.jsonl', sums(8))}",
                    "adapter=prompt",
                    f"out={tmp_path / 'r'}",
                ],
            )
        )
    from tunelab.errors import DataError

    with pytest.raises(DataError, match="'chosen'"):
        rm.main(
            load_config(
                RMConfig,
                None,
                [
                    "model=tiny:llama",
                    f"data.train={write_jsonl(tmp_path / 'q.jsonl', [{'prompt': 'x', 'rejected': 'y'}])}",
                ],
            )
        )


def test_select_ranks_candidates_by_mean_reward(trained_rm, tmp_path):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": f"{a}+{b}="} for a in range(3) for b in range(2)]
    )
    out = tmp_path / "ranking.json"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunelab",
            "select",
            "--rm",
            str(trained_rm / "final"),
            "tiny:llama",
            "tiny:qwen2",
            "--prompts",
            str(prompts),
            "--max-new-tokens",
            "3",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    ranking = json.loads(out.read_text())["ranking"]
    assert {r["candidate"] for r in ranking} == {"tiny:llama", "tiny:qwen2"}
    assert ranking[0]["mean_reward"] >= ranking[1]["mean_reward"]
    assert all(len(r["answers"]) == 6 for r in ranking)


def test_best_of_n_picks_the_highest_reward_and_writes_rejection_sampling_data(trained_rm, tmp_path):
    from tunelab.models.scorer import RewardScorer
    from tunelab.rank import best_of_n, write_rejection_sampling

    scorer = RewardScorer(str(trained_rm / "final"))
    results = best_of_n(scorer, "tiny:llama", ["1+2=", "3+1="], n=4, max_new_tokens=3, temperature=1.0)
    for r in results:
        rescored = scorer.score([(r["prompt"], a) for a in r["answers"]])
        assert r["rewards"] == pytest.approx(rescored, abs=1e-5) and r["rewards"] == sorted(
            r["rewards"], reverse=True
        )
        assert r["best"] == r["answers"][0]
    paths = write_rejection_sampling(results, tmp_path / "rs")
    sft_rows = [json.loads(x) for x in paths["sft"].read_text().splitlines()]
    assert [row["completion"] for row in sft_rows] == [r["best"] for r in results]
    # the CLI end to end
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "1+2="}])
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunelab",
            "best-of-n",
            "--rm",
            str(trained_rm / "final"),
            "tiny:llama",
            "--prompts",
            str(prompts),
            "-n",
            "3",
            "--max-new-tokens",
            "3",
            "--out",
            str(tmp_path / "cli"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "cli" / "sft.jsonl").is_file() and (tmp_path / "cli" / "preference.jsonl").is_file()


def test_sft_stops_on_reward_and_keeps_the_best(trained_rm, tmp_path):
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": r["prompt"], "completion": r["chosen"]} for r in sums(40)]
    )
    cfg = load_config(
        SFTConfig,
        None,
        [
            "model=tiny:llama",
            f"data.train={pairs}",
            f"out={tmp_path / 'run'}",
            "adapter=lora",
            "train.max_steps=12",
            "train.eval_every=2",
            "train.lr=1e-2",
            "data.eval_split=0.2",
            f"reward_eval.rm={trained_rm / 'final'}",
            "reward_eval.n_prompts=4",
            "reward_eval.max_new_tokens=3",
            "reward_eval.patience=2",
        ],
    )
    run = sft.main(cfg)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_reward" in r]
    assert evals and all(r["step"] % 2 == 0 for r in evals)
    best = max(evals, key=lambda r: r["eval_reward"])
    report = (run / "report.md").read_text()
    assert f"best eval_reward: {best['eval_reward']:.4f} at step {best['step']}" in report
    assert (run / "final" / "adapter_config.json").is_file()


def test_reward_model_drives_rl(trained_rm, tmp_path):
    """The fourth use: a reward model is a reward source of `tunelab rl`."""
    from tunelab.config.schema import RLConfig
    from tunelab.stages import rl

    prompts = write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": f"{a}+{b}="} for a in range(2) for b in range(2)]
    )
    cfg = load_config(
        RLConfig,
        None,
        [
            "model=tiny:llama",
            f"data.train={prompts}",
            f"reward=rm:{trained_rm / 'final'}",
            "rl.group=2",
            "rl.prompts_per_step=2",
            "rollout.max_new_tokens=2",
            "train.max_steps=2",
            f"out={tmp_path / 'run'}",
        ],
    )
    run = rl.main(cfg)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["reward"]) for r in rows)
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    from tunelab.models.scorer import RewardScorer

    again = RewardScorer(str(trained_rm / "final")).score([(samples[0]["prompt"], samples[0]["completion"])])[
        0
    ]
    assert samples[0]["reward"] == pytest.approx(again, abs=1e-4)  # the reward is the reward model's score
