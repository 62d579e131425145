"""The ladder end to end on a tiny model (every kind of rung, a failing one, seeds, learning curves), its
report in a real browser, the paired bootstrap and the decision rule on constructed numbers, early
stopping on the task metric, and the plan's arithmetic."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import write_jsonl

from tunelab.ladder.curves import Point, last_slope, overtakes, shares
from tunelab.ladder.decide import Candidate, Rule, decide
from tunelab.ladder.stats import paired_bootstrap, resolved, rows_to_resolve

TASK = """name: sums
template: "Q: {question}"
data: {train: rows.jsonl, eval_split: 0.25}
rules: ["Answer with a number."]
extract: number
metrics: [numeric]
max_new_tokens: 6
ladder:
  rungs: [zero_shot, few_shot, lora, full, best_of_n, rl]
  eval: {limit: 6, train_limit: 4, batch_size: 8}
  lora: {steps: 2}
  full: {steps: 2}
  seeds: 2
  curves: {rungs: [lora], fractions: [0.5, 1.0]}
  best_of_n: {prompts: 8, samples: 2, rm: {steps: 2}}
  rl: {steps: 1, group: 2, prompts_per_step: 1}
  max_len: 64
"""


@pytest.fixture(scope="module")
def ladder_run(tmp_path_factory):
    """One tiny ladder for the tests below (about a minute: three child training runs)."""
    from tunelab.cli import main

    folder = tmp_path_factory.mktemp("ladder")
    write_jsonl(
        folder / "rows.jsonl", [{"question": f"what is {i}+{i}", "answer": str(2 * i)} for i in range(40)]
    )
    (folder / "task.yaml").write_text(TASK)
    out = folder / "run"
    code = main(
        ["ladder", str(folder / "task.yaml"), "model=tiny:llama", f"out={out}", "retention.task=capitals"]
    )
    return code, out


def test_every_rung_reports_quality_and_cost(ladder_run):
    code, out = ladder_run
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    rungs = {r["name"]: r for r in results["rungs"]}
    assert list(rungs) == ["zero_shot", "few_shot", "lora", "full", "best_of_n", "rl"]
    # best-of-n uses its reward model only if the quality gate passes it; else the rung fails saying so
    bon = rungs["best_of_n"]
    if bon["status"] == "ok":
        assert any("vs greedy" in note and "vs random pick" in note for note in bon["notes"]), bon["notes"]
    else:
        assert "gate" in bon["error"] or "baseline" in bon["error"], bon["error"]
    ok = {n: r for n, r in rungs.items() if r["status"] == "ok"}
    assert set(rungs) - set(ok) <= {"best_of_n"}, {n: r["error"] for n, r in rungs.items()}
    for r in ok.values():
        m, d, costs = r["metric"], r["vs_best"], r["costs"]
        assert m["low"] <= m["value"] <= m["high"] and r["tokens_per_example"] > 0
        assert d["low"] <= d["diff"] <= d["high"] and d["diff"] <= 0  # the best rung is 0 [0, 0]
        assert set(costs) >= {"train_cpu_s", "train_wall_s", "peak_memory_mb", "stored_bytes"}
        assert (
            costs["answers"] == 10_000
            and costs["seconds_per_answer"] > 0
            and costs["cpu_seconds_per_answer"] > 0
        )
    assert rungs["zero_shot"]["train_seconds"] == 0 and rungs["zero_shot"]["stored_bytes"] == 0
    lora, full = rungs["lora"], rungs["full"]
    assert 0 < lora["trainable_params"] < full["trainable_params"]  # LoRA trains a sliver of the model
    assert 0 < lora["stored_bytes"] < full["stored_bytes"]  # and stores a few KB instead of the model
    assert lora["peak_memory_mb"] > 0 and lora["plan_memory_mb"] > 0 and lora["costs"]["train_cpu_s"] > 0
    assert lora["steps_run"] == 2 and lora["stopped"] == "steps"  # the cap, before any plateau
    assert len(lora["seed_metrics"]) == 2 and (out / "runs" / "lora-seed1.cmd").is_file()
    for name in ("lora", "full", "rl"):  # forgetting and over-fitting measured for trained rungs
        assert rungs[name]["perplexity"] > 0 and rungs[name]["train_metric"] is not None
        assert rungs[name]["retention"] is not None
    assert results["base"]["perplexity"] > 0
    assert bon["status"] != "ok" or bon["notes"][0].startswith("policy: base")
    rec = results["recommendation"]
    # the report needs no checkpoints and only the recommended rung's model (each rung's .cmd retrains it)
    assert not list((out / "runs").glob("*/checkpoints")) and not list((out / "runs").glob("*/best"))
    kept = sorted(p.parent.name for p in (out / "runs").glob("*/final"))
    assert kept == ([rec["rung"]] if rec["rung"] in {"lora", "full", "prompt_tuning", "rl"} else []), kept
    assert (out / "runs" / "lora.cmd").is_file() and (out / "runs" / "rl.cmd").is_file()
    assert (out / "data" / "preference.jsonl").is_file()
    assert rec["rung"] in rungs and rec["why"].startswith(rec["rung"])


def test_validation_rows_come_from_training_rows_only(ladder_run):
    _, out = ladder_run
    held = {
        json.loads(line)["prompt"] for line in (out / "outputs" / "zero_shot.jsonl").read_text().splitlines()
    }
    val = [json.loads(line) for line in (out / "data" / "validation.jsonl").read_text().splitlines()]
    train = [json.loads(line) for line in (out / "data" / "train.jsonl").read_text().splitlines()]
    assert len(val) == 6 and len(train) == 24  # 30 training rows: 20% (6) carved off for early stopping
    assert not {f"Q: {r['question']}" for r in val} & (held | {t["prompt"] for t in train})
    cmd = (out / "runs" / "lora.cmd").read_text()
    assert "task_eval.rows=" in cmd and "train.max_steps=2" in cmd
    rows = [json.loads(line) for line in (out / "runs" / "lora" / "metrics.jsonl").read_text().splitlines()]
    assert "eval_task" in rows[-1]  # the task metric on the validation rows, at the last step


def test_learning_curves_run_each_fraction(ladder_run):
    _, out = ladder_run
    results = json.loads((out / "results.json").read_text())
    points = results["curves"]["lora"]
    assert [p["rows"] for p in points] == [12, 24]  # half and all of the 24 rows trained on
    assert all(p["metric"]["low"] <= p["metric"]["value"] <= p["metric"]["high"] for p in points)
    assert (out / "runs" / "lora-rows12.cmd").is_file() and not (out / "runs" / "lora-rows24").exists()
    assert "Learning curves" in (out / "report.md").read_text()


def test_report_files_and_plots(ladder_run):
    _, out = ladder_run
    md = (out / "report.md").read_text()
    assert "Recommendation:" in md and "| lora |" in md
    assert "vs best [95% CI]" in md and "steps (stopped)" in md and "Resolved as worse" in md
    for plot in (
        "metric_per_rung",
        "metric_vs_cost",
        "training_curves",
        "validation_curves",
        "learning_curves",
    ):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 1000
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5 and "<table>" in page and "Decision rule" in page


def test_report_renders_in_headless_chromium(ladder_run, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "make setup installs Debian's chromium"
    from playwright.sync_api import sync_playwright

    _, out = ladder_run
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    args += ["--disable-sync", "--no-first-run"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto((out / "report.html").resolve().as_uri())
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
        rows = page.eval_on_selector_all("tr", "rows => rows.length")
        heads = page.eval_on_selector_all("th", "ths => ths.map(t => t.textContent)")
        picked = page.eval_on_selector_all("tr.pick", "rows => rows.length")
        shot = out / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert len(widths) == 5 and all(w > 300 for w in widths)  # every plot decoded and drawn
    assert rows == 1 + 6 and shot.stat().st_size > 10_000 and picked == 1
    assert "vs best [95% CI]" in heads and "steps (stopped)" in heads and "seeds min–max" in heads


def test_a_failing_rung_is_reported_and_the_ladder_goes_on(cli, tmp_path):
    write_jsonl(tmp_path / "rows.jsonl", [{"question": f"q{i}", "answer": str(i)} for i in range(12)])
    (tmp_path / "task.yaml").write_text(TASK.split("ladder:")[0])
    out = tmp_path / "run"
    code, stdout, err = cli(
        "ladder",
        str(tmp_path / "task.yaml"),
        "model=tiny:llama",
        "rungs=[rules,zero_shot,lora]",
        "lora.steps=1",
        "lora.lr=-1",
        "eval.limit=2",
        "eval.train_limit=0",
        "retention.task=null",
        f"out={out}",
    )
    assert code == 2 and "lora.lr" in err  # a bad budget is a config error before anything runs

    code, stdout, err = cli(
        "ladder",
        str(tmp_path / "task.yaml"),
        "model=tiny:llama",
        "rungs=[cot,zero_shot]",
        "eval.limit=2",
        "eval.train_limit=0",
        "retention.task=null",
        f"out={out}",
        "prompting.cot_max_new_tokens=0",
    )
    assert code == 2  # likewise

    (tmp_path / "norules.yaml").write_text(
        TASK.split("ladder:")[0].replace('rules: ["Answer with a number."]\n', "")
    )
    code, stdout, err = cli(
        "ladder",
        str(tmp_path / "norules.yaml"),
        "model=tiny:llama",
        "rungs=[rules,zero_shot]",
        "eval.limit=2",
        "eval.train_limit=0",
        "retention.task=null",
        f"out={out}",
    )
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    status = {r["name"]: (r["status"], r["error"]) for r in results["rungs"]}
    assert status["rules"][0] == "failed" and "has no rules" in status["rules"][1]
    assert status["zero_shot"] == ("ok", None)
    assert "failed" in (out / "report.md").read_text()


# ---------------------------------------------------------------- statistics, by hand


def test_paired_bootstrap_by_hand():
    # identical answers: every resampled difference is 0, so 0 [0, 0], and no rows would resolve it
    assert paired_bootstrap([1, 1, 0, 0], [1, 1, 0, 0]) == (0.0, 0.0, 0.0)
    assert rows_to_resolve(0.0, 0.0, 0.0, 4) is None
    # a wins 6 of 30 rows, ties the rest: a resample's wins X ~ Binomial(30, 0.2); P(X <= 1) = 0.0105 and
    # P(X <= 2) = 0.044, so the 2.5th percentile is X = 2: low = 2/30; P(X <= 10) = 0.974, so high ~ 10-11/30
    diff, low, high = paired_bootstrap([1] * 30, [1] * 24 + [0] * 6)
    assert diff == pytest.approx(0.2) and low == pytest.approx(2 / 30) and 10 / 30 <= high <= 11 / 30
    assert resolved(low, high)
    # 2 wins of 10: P(X = 0) = 0.8^10 = 0.107 > 2.5%, so low = 0: not resolved; P(X <= 4) = 0.967 and
    # P(X <= 5) = 0.994: high = 5/10. Half-width 0.25 vs 0.2: 10 x (0.25 / 0.2)^2 = 15.6 -> 16 rows
    diff, low, high = paired_bootstrap([1] * 10, [1] * 8 + [0] * 2)
    assert (diff, low, high) == (pytest.approx(0.2), 0.0, pytest.approx(0.5)) and not resolved(low, high)
    assert rows_to_resolve(diff, low, high, 10) == 16


# ---------------------------------------------------------------- the decision rule, by hand

N = 20
LORA = [1.0] * 18 + [0.0] * 2  # 0.90


def table(**changes):
    """zero_shot 0.25 and few_shot 0.60 get right a subset of LoRA's rows; full ties LoRA row by row."""
    rows = {
        "zero_shot": Candidate("zero_shot", [1.0] * 5 + [0.0] * 15, 0, 0.1, 1000, 0, 100),
        "few_shot": Candidate("few_shot", [1.0] * 12 + [0.0] * 8, 0, 0.3, 1100, 0, 400),
        "lora": Candidate("lora", LORA, 150, 0.1, 2800, 7 * 2**20, 90),
        "full": Candidate("full", LORA, 100, 0.1, 4100, 513 * 2**20, 90),
    }
    rows.update(changes)
    return list(rows.values())


def test_a_tie_goes_to_the_cheaper_rung_and_the_why_names_the_costs():
    d = decide(table(), Rule(tolerance=0.05, answers=10_000), "acc")
    # zero_shot -0.65: X ~ Bin(20, 0.65) never falls near 1 miss -> wholly below -0.05; few_shot -0.30:
    # P(X <= 2 of 6 misses) = 0.035 -> high = -0.10 < -0.05: both resolved as worse by more than 0.05
    assert "worse than lora" in d.ruled_out["zero_shot"] and "worse than lora" in d.ruled_out["few_shot"]
    # lora vs full: compute 150 + 10,000 x 0.1 = 1,150 s vs 1,100 (within 1.5x); memory 2,800 vs 4,100
    # (within 1.5x); storage 7 MB vs 513 MB (above 1.5x): full drops out on storage
    assert d.pick == "lora" and "storage: lora 7 MB against full 513 MB" in d.why
    assert "tied row for row with full" in d.why
    assert "compute 1,150 s" in d.why and "training 150 CPU s" in d.why


def test_a_dominated_rung_is_never_picked():
    # cheap is 0.85 against 0.90 (one row apart: not resolved), costs the same but 200 MB less memory;
    # by the cost bands both stay in and the higher metric would win the last tie: dominance rules it out
    cheap = Candidate("cheap", [1.0] * 17 + [0.0] * 3, 150, 0.1, 2600, 7 * 2**20, 90)
    d = decide([table()[2], cheap], Rule())
    assert d.pick == "cheap" and d.ruled_out["lora"].startswith("dominated by cheap")


def test_a_memory_limit_rules_rungs_out():
    d = decide(table(), Rule(memory_mb=3000), "acc")
    assert d.pick == "lora" and "limits.memory_mb=3,000" in d.ruled_out["full"]
    # 2,000 MB: neither training rung fits; few_shot (0.60) is the best left, zero_shot -0.35 behind it
    # (7 of 20 rows: P(X <= 3) = 0.044, high = -0.15) is resolved worse
    d = decide(table(), Rule(memory_mb=2000), "acc")
    assert d.pick == "few_shot" and d.best == "few_shot" and "worse than few_shot" in d.ruled_out["zero_shot"]


def test_target_changes_the_pick():
    # few_shot 0.85 vs lora 0.90: not resolved; compute 500 s vs 650 s (within 1.5x), memory 1,100 vs
    # 2,800 MB (beyond): few_shot. A bar at 0.88 rules it out, and LoRA is what is left.
    few = Candidate("few_shot", [1.0] * 17 + [0.0] * 3, 0, 0.05, 1100, 0, 400)
    lora = Candidate("lora", LORA, 150, 0.05, 2800, 7 * 2**20, 90)
    assert decide([few, lora], Rule()).pick == "few_shot"
    d = decide([few, lora], Rule(target=0.88), "acc")
    assert d.pick == "lora" and "below target=0.88" in d.ruled_out["few_shot"]


# ---------------------------------------------------------------- learning curves, by hand


def test_learning_curve_slope_and_crossover():
    rows = [{"i": i} for i in range(8)]
    small, half, whole = shares(rows, [0.25, 0.5, 1.0], seed=0)
    assert [len(s) for s in (small, half, whole)] == [2, 4, 8] and half[:2] == small  # nested
    lora = [Point(100, [1.0] * 6 + [0.0] * 4), Point(200, [1.0] * 7 + [0.0] * 3)]
    full = [Point(100, [1.0] * 4 + [0.0] * 6), Point(200, [1.0] * 10)]
    s = last_slope(full)  # 0.4 -> 1.0 over 100 more rows: +0.6, i.e. +6 per 1,000 rows
    assert s["diff"] == pytest.approx(0.6) and s["per_1k"] == pytest.approx(6.0) and s["low"] > 0
    words = overtakes(lora, full)  # at 100 rows full is 0.2 behind, at 200 rows 0.3 ahead
    assert "100 rows -0.20" in words and "full scores above lora from 200 rows" in words


# ---------------------------------------------------------------- fair budgets: early stopping

VAL_ROWS = 4
SCRIPT = [0.2, 0.6, 0.5, 0.6, 0.4]  # the validation metric at evaluations 1, 2, ...
_calls = {"n": 0}


def scripted(prediction, row):
    """A task metric that follows SCRIPT: evaluation k scores every validation row SCRIPT[k]."""
    k = _calls["n"] // VAL_ROWS
    _calls["n"] += 1
    return SCRIPT[min(k, len(SCRIPT) - 1)]


def test_early_stopping_on_the_task_metric_keeps_the_best_checkpoint(tmp_path):
    from safetensors.torch import load_file

    from tunelab.cli import main

    _calls["n"] = 0
    rows = [{"question": f"what is {i}+{i}", "answer": str(2 * i)} for i in range(VAL_ROWS)]
    write_jsonl(tmp_path / "val.jsonl", rows)
    write_jsonl(tmp_path / "rows.jsonl", rows)
    write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"prompt": f"Q: {r['question']}", "completion": r["answer"]} for r in rows * 4],
    )
    (tmp_path / "task.yaml").write_text(
        'name: scripted\ntemplate: "Q: {question}"\ndata: {train: rows.jsonl}\nmetrics: ["test_ladder:scripted"]\n'
        "max_new_tokens: 3\n"
    )
    run = tmp_path / "run"
    args = ["sft", "model=tiny:llama", "adapter=lora", f"data.train={tmp_path / 'pairs.jsonl'}", f"out={run}"]
    args += ["train.max_steps=40", "train.eval_every=2", "train.lr=1e-2", "train.save_every=2"]
    args += [
        "train.keep_last=20",
        f"task_eval.task={tmp_path / 'task.yaml'}",
        f"task_eval.rows={tmp_path / 'val.jsonl'}",
    ]
    assert main([*args, "task_eval.patience=2"]) == 0
    # evaluations at steps 2, 4, 6, 8: 0.2, 0.6 (best), 0.5, 0.6 (not better): patience 2 ends at step 8
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["eval_task"]) for r in logged if "eval_task" in r] == [
        (2, 0.2),
        (4, 0.6),
        (6, 0.5),
        (8, 0.6),
    ]
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["steps_done"], summary["best_step"], summary["stopped"]) == (8, 4, "plateau")

    def sums(path):  # tensor sums, sorted: the same weights under PEFT's and the checkpoint's names
        return sorted(round(float(t.double().sum()), 6) for t in load_file(path).values())

    final = sums(run / "final" / "adapter_model.safetensors")
    assert final == sums(run / "checkpoints" / "step-4" / "trainable.safetensors")
    assert final != sums(run / "checkpoints" / "step-8" / "trainable.safetensors")


def test_plan_counts_parameters_like_the_model(tiny_llama):
    from tunelab.plan import count_parameters, estimate, trainable_parameters
    from tunelab.train.report import count_params

    model, _ = tiny_llama
    assert count_parameters(model.config) == count_params(model)[1]
    import copy

    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )
    assert trainable_parameters(model.config, "lora", 16) == count_params(lora)[0]
    full = estimate(model.config, "full", batch_size=4, seq_len=32)
    adapter = estimate(model.config, "lora", batch_size=4, seq_len=32)
    assert full.grads_optimizer_mb > adapter.grads_optimizer_mb and full.weights_mb == adapter.weights_mb
    assert full.flops_per_step == pytest.approx(1.5 * adapter.flops_per_step)


def test_plan_command_prints_memory_time_and_data(cli):
    code, stdout, _ = cli("plan", "tiny:llama", "--method", "full", "lora", "--steps", "10")
    assert code == 0
    assert "total MB" in stdout and "lora" in stdout and "tokens" in stdout
