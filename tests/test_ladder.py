"""The ladder end to end on a tiny model (every kind of rung, a failing one), its report in a real
browser, the recommendation rule, and the plan's arithmetic."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
from conftest import write_jsonl

from tunelab.ladder.report import recommend
from tunelab.ladder.run import RungResult

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
    assert all(r["status"] == "ok" for r in rungs.values()), {n: r["error"] for n, r in rungs.items()}
    for r in rungs.values():
        mean, low, high = r["metric"]
        assert low <= mean <= high and r["tokens_per_example"] > 0
    assert rungs["zero_shot"]["train_seconds"] == 0 and rungs["zero_shot"]["stored_bytes"] == 0
    lora, full = rungs["lora"], rungs["full"]
    assert 0 < lora["trainable_params"] < full["trainable_params"]  # LoRA trains a sliver of the model
    assert 0 < lora["stored_bytes"] < full["stored_bytes"]  # and stores a few KB instead of the model
    assert lora["peak_memory_mb"] > 0 and lora["plan_memory_mb"] > 0
    for name in ("lora", "full", "rl"):  # forgetting and over-fitting measured for trained rungs
        assert rungs[name]["perplexity"] > 0 and rungs[name]["train_metric"] is not None
        assert rungs[name]["retention"] is not None
    assert results["base"]["perplexity"] > 0
    assert rungs["best_of_n"]["notes"][0].startswith("policy: base")
    assert (out / "runs" / "lora" / "final" / "adapter_config.json").is_file()
    assert (out / "runs" / "rl" / "final" / "adapter_config.json").is_file()
    assert (out / "data" / "preference.jsonl").is_file()


def test_report_files_and_plots(ladder_run):
    _, out = ladder_run
    md = (out / "report.md").read_text()
    assert "Recommendation:" in md and "| lora |" in md
    for plot in ("metric_per_rung", "metric_vs_cost", "training_curves"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 1000
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<table>" in page


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
        shot = out / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert len(widths) == 3 and all(w > 300 for w in widths)  # every plot decoded and drawn
    assert rows == 1 + 6 and shot.stat().st_size > 10_000


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


def result(name, mean, seconds, tokens=100.0):
    return RungResult(
        name, "x", metric=(mean, mean - 0.1, mean + 0.1), train_seconds=seconds, tokens_per_example=tokens
    )


def test_recommendation_is_the_cheapest_rung_within_tolerance_of_the_best():
    ladder = SimpleNamespace(cfg=SimpleNamespace(tolerance=0.05), task=SimpleNamespace(metric="acc"))
    ladder.results = {
        "zero_shot": result("zero_shot", 0.30, 0),
        "few_shot": result("few_shot", 0.90, 0, tokens=400),
        "lora": result("lora", 0.93, 60),
        "full": result("full", 0.94, 200),
    }
    pick, why = recommend(ladder)
    assert pick.name == "few_shot" and "full" in why  # 0.90 >= 0.94 - 0.05, and it needs no training
    ladder.cfg.tolerance = 0.02
    assert recommend(ladder)[0].name == "lora"
    ladder.results["lora"].status = "failed"
    assert recommend(ladder)[0].name == "full"


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
