"""The ladder's rungs: each is a function `rung(ladder) -> RungResult`, looked up in RUNGS.

prompting rungs   zero_shot, rules, cot, reflection, few_shot, self_consistency: the base model as it is
prompt_tuning     `tunelab sft adapter=prompt` (20 virtual tokens; the model frozen)
lora              `tunelab sft adapter=lora` (r16 on q/k/v/o)
full              `tunelab sft adapter=none` (small learning rate, dropout 0.1)
                  each SFT rung trains until its task metric on validation rows (carved from the
                  training rows, never the held-out ones) stops improving; `<rung>.steps` and
                  `<rung>.seconds` are caps, final/ is the best checkpoint; seeds=N trains N times
best_of_n         a reward model trained on pairs of the best SFT rung's own samples, ranked by the
                  task metric (no human labels needed); then best-of-n sampling from that SFT model
rl                GRPO with the task metric as reward, starting from the best LoRA / full SFT model
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.ladder.state import Ladder, RungResult, rss_mb, validation_split
from tunelab.prompting.lm import user

ADAPTERS = {"prompt_tuning": "prompt", "lora": "lora", "full": "none"}
PLAN_METHODS = {"prompt_tuning": "prompt", "lora": "lora", "full": "full"}


def baseline(ladder: Ladder) -> RungResult:
    """The base model's perplexity and second-task score: what forgetting is measured against."""
    base = RungResult("base", "base", model_ref=ladder.cfg.model.name)
    base.perplexity, base.retention = ladder.retention(ladder.cfg.model.name)
    base.peak_memory_mb = rss_mb()
    return base


def prompting(name: str):
    def rung(ladder: Ladder) -> RungResult:
        ref = ladder.cfg.model.name
        result = RungResult(name, "prompting", model_ref=ref)
        evaluated = ladder.evaluate(ref, name, ladder.rows)
        ladder.record(result, evaluated)
        result.perplexity, result.retention = (
            ladder.base.perplexity,
            ladder.base.retention,
        )  # no weight changed
        result.peak_memory_mb = rss_mb()
        if evaluated.shots is not None:
            result.notes.append(f"{evaluated.shots:.1f} examples fit on average")
        return result

    return rung


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path.resolve()


def split_validation(ladder: Ladder) -> tuple[list[dict], list[dict]]:
    """(rows to train on, validation rows): the last `validation.rows` training rows (at most
    `validation.share` of them) are kept for early stopping; the held-out rows are never touched."""
    val = ladder.cfg.validation
    return validation_split(ladder.task.train, val.rows, val.share)


def training_pairs(ladder: Ladder, rows: list[dict], name: str = "train") -> Path:
    """Task rows as prompt/completion pairs, rendered with the task's template."""
    path = ladder.out / "data" / f"{name}.jsonl"
    if not path.exists():
        pairs = [{"prompt": ladder.task.prompt(r), "completion": ladder.task.reference(r)} for r in rows]
        _write_jsonl(path, pairs)
    return path.resolve()


def _task_ref(ladder: Ladder) -> str:
    ref = ladder.cfg.task
    return str(Path(ref).resolve()) if Path(ref).exists() else ref


def longest_row(ladder: Ladder) -> tuple[int, int]:
    """(tokens, trained tokens) of the longest rendered training rows: a padded batch's length, and
    the positions where the loss needs logits."""
    from tunelab.data.render import RenderOptions, render_pair

    tok = ladder.lm(ladder.cfg.model.name).tok
    rendered = [
        render_pair(tok, ladder.task.prompt(r), ladder.task.reference(r), RenderOptions())
        for r in ladder.task.train[:200]
    ]
    return max(len(t.input_ids) for t in rendered), max(t.n_trained for t in rendered)


def estimate(ladder: Ladder, name: str):
    from tunelab.plan import estimate as plan

    config = ladder.lm(ladder.cfg.model.name).model.config
    budget = getattr(ladder.cfg, name)
    seq, targets = longest_row(ladder)
    return plan(
        config,
        PLAN_METHODS[name],
        batch_size=budget.batch_size,
        seq_len=min(seq, ladder.cfg.max_len),
        target_len=targets,
        gflops=ladder.gflops,
    ), budget.steps


def plan_line(ladder: Ladder, name: str) -> str:
    if name not in PLAN_METHODS:
        return ""
    p, steps = estimate(ladder, name)
    return (
        f"{p.trainable:,} trainable parameters, ~{p.total_mb:,.0f} MB peak, "
        f"~{p.seconds_per_step:.1f} s/step x {steps} steps ≈ {p.seconds_per_step * steps / 60:.1f} min"
    )


def sft_overrides(ladder: Ladder, name: str, data: Path, seed: int) -> list[str]:
    cfg = ladder.cfg
    budget = getattr(cfg, name)
    val = ladder.out / "data" / "validation.jsonl"
    if not val.exists():
        val.parent.mkdir(parents=True, exist_ok=True)
        val.write_text("".join(json.dumps(r, default=str) + "\n" for r in split_validation(ladder)[1]))
    overrides = [
        f"model={cfg.model.name}",
        f"adapter={ADAPTERS[name]}",
        f"data.train={data}",
        f"train.max_steps={budget.steps}",  # a cap: the validation metric decides when to stop
        f"train.lr={budget.lr}",
        f"train.batch_size={budget.batch_size}",
        f"train.max_len={cfg.max_len}",
        f"train.eval_every={budget.eval_every}",
        f"task_eval.task={_task_ref(ladder)}",
        f"task_eval.rows={val.resolve()}",
        f"task_eval.patience={budget.patience}",
        "train.warmup=0.1",
        f"seed={seed}",
    ]
    if budget.seconds:
        overrides.append(f"train.max_seconds={budget.seconds}")
    if name == "lora" and "rl" in cfg.rungs:
        overrides.append("merge=true")  # RL starts from the merged model, with a fresh adapter
    if name == "full":
        overrides.append("model.dropout=0.1")  # the knob against fast over-fitting
    return overrides


def train_rung(
    ladder: Ladder, name: str, rows: list[dict], *, run_name: str, seed: int, data_name: str = "train"
) -> RungResult:
    """Train SFT rung `name` on `rows` and score it on the held-out rows (no forgetting checks)."""
    plan, _ = estimate(ladder, name)
    result = RungResult(name, "training", plan_memory_mb=plan.total_mb)
    overrides = sft_overrides(ladder, name, training_pairs(ladder, rows, data_name), seed)
    run_dir = ladder.train_child(result, "sft", overrides, getattr(ladder.cfg, name).steps, name=run_name)
    result.model_ref = str(run_dir / "final")
    ladder.record(result, ladder.evaluate(result.model_ref, "zero_shot", ladder.rows), name=run_name)
    return result


def sft(name: str):
    def rung(ladder: Ladder) -> RungResult:
        cfg, rows = ladder.cfg, split_validation(ladder)[0]
        result = train_rung(ladder, name, rows, run_name=name, seed=cfg.seed)
        result.seed_metrics = [result.metric[0]]
        for seed in range(cfg.seed + 1, cfg.seed + cfg.seeds):  # the spread a different seed makes
            again = train_rung(ladder, name, rows, run_name=f"{name}-seed{seed}", seed=seed)
            result.seed_metrics.append(again.metric[0])
        return ladder.assess(result, result.model_ref, held_out=False)

    return rung


def best_sft(ladder: Ladder, *, mergeable: bool = False) -> RungResult | None:
    """The SFT rung with the best held-out metric (LoRA or full only, when RL must start from it)."""
    names = ("lora", "full") if mergeable else ("prompt_tuning", "lora", "full")
    done = [ladder.results[n] for n in names if n in ladder.results and ladder.results[n].status == "ok"]
    return max(done, key=lambda r: r.metric[0]) if done else None


def preference_pairs(ladder: Ladder, refs: list[str]) -> list[dict]:
    """Sample answers to training prompts from each model in `refs`, rank them with the task metric,
    and pair a best answer with a worst one per prompt.

    A well-trained SFT model rarely errs, so the base model's samples are pooled with it: they hold the
    mistakes a reward model must learn to rank low. When every sample of a prompt has the same score
    below the reference's, the reference answer is the chosen one.
    """
    task, bon = ladder.task, ladder.cfg.best_of_n
    rows = task.train[-bon.prompts :]
    n = bon.samples
    pooled: list[list[str]] = [[] for _ in rows]
    for ref in refs:
        conversations = [[user(task.prompt(r))] for r in rows for _ in range(n)]
        replies = ladder.lm(ref).complete(
            conversations, max_new_tokens=task.max_new_tokens, temperature=1.0, seed=ladder.cfg.seed
        )
        for i in range(len(rows)):
            pooled[i] += [r.text for r in replies[i * n : (i + 1) * n]]
    pairs = []
    for row, texts in zip(rows, pooled, strict=True):
        scored = sorted(
            ((task.score(task.answer(t), row)[task.metric], t) for t in texts), key=lambda s: s[0]
        )
        (low, worst), (high, best) = scored[0], scored[-1]
        if high <= low:
            if low >= 1.0:
                continue
            best = task.reference(row)
        pairs.append({"prompt": task.prompt(row), "chosen": best, "rejected": worst})
    return pairs


def best_of_n(ladder: Ladder) -> RungResult:
    """A reward model picks the best of n sampled answers. policy=base: the base model samples and the
    reward model is the only thing trained (pairs from the base model's own samples); policy=sft: the
    best SFT rung samples, and its samples join the base model's in the pairs."""
    cfg, bon = ladder.cfg, ladder.cfg.best_of_n
    start_rung = best_sft(ladder) if bon.policy == "sft" else None
    policy = start_rung.model_ref if start_rung else cfg.model.name
    result = RungResult("best_of_n", "reward", model_ref=policy)
    started, cpu_started = time.perf_counter(), time.process_time()
    if bon.pairs:  # human (or other) preference pairs given: no sampling
        prefs = Path(bon.pairs).resolve()
        n_pairs = sum(1 for line in prefs.read_text().splitlines() if line.strip())
    else:
        sources = [cfg.model.name] + ([policy] if policy != cfg.model.name else [])
        pairs = preference_pairs(ladder, sources)
        if len(pairs) < 4:
            raise TunelabError(
                f"only {len(pairs)} preference pairs from {bon.prompts} prompts: too few for a reward model"
            )
        prefs, n_pairs = _write_jsonl(ladder.out / "data" / "preference.jsonl", pairs), len(pairs)
    result.train_seconds += time.perf_counter() - started
    result.train_cpu_s += time.process_time() - cpu_started
    overrides = [
        f"model={cfg.model.name}",
        "adapter=lora",
        f"data.train={prefs}",
        f"train.max_steps={bon.rm.steps}",
        f"train.lr={bon.rm.lr}",
        f"train.batch_size={bon.rm.batch_size}",
        f"train.max_len={cfg.max_len}",
        "data.eval_split=0.25",  # held-out pairs: the quality gate at the end of `tunelab rm` needs them
        f"seed={cfg.seed}",
    ]
    run_dir = ladder.train_child(result, "rm", overrides, bon.rm.steps, name="reward_model")
    if start_rung:
        result.train_seconds += start_rung.train_seconds
        result.train_cpu_s += start_rung.train_cpu_s
        result.stored_bytes += start_rung.stored_bytes
    from tunelab.eval.bon_check import best_of_n_check, check_line

    rm = str(run_dir / "final")
    # a reward model that is not clearly better than the null baselines is refused (the rung fails with why)
    opts = cfg.prompting.model_copy(update={"rm": rm, "samples": bon.samples, "rm_strict": True})
    evaluated = ladder.evaluate(policy, "best_of_n", ladder.rows, opts)
    ladder.record(result, evaluated)
    greedy = ladder.evaluate(policy, "zero_shot", ladder.rows)  # best-of-n must beat this, and a random pick
    result.notes.append(
        check_line(best_of_n_check(ladder.task, ladder.rows, evaluated, greedy, rm=rm, seed=cfg.seed))
    )
    source = start_rung or ladder.base
    result.perplexity, result.retention = source.perplexity, source.retention
    result.notes.append(
        f"policy: {start_rung.name if start_rung else 'base'}; reward model from {n_pairs} pairs"
    )
    return result


def _reward_spec(ladder: Ladder) -> str:
    ref = ladder.cfg.task
    if ref.startswith("reasoning_gym:"):
        return ref
    return f"task:{Path(ref).resolve()}" if Path(ref).exists() else f"task:{ref}"


def rl(ladder: Ladder) -> RungResult:
    cfg, task = ladder.cfg, ladder.task
    start_rung = best_sft(ladder, mergeable=True)
    if start_rung is None:
        start, start_name = cfg.model.name, "base"
    elif start_rung.name == "lora":
        start, start_name = str(Path(start_rung.run_dir) / "merged"), "lora"
    else:
        start, start_name = start_rung.model_ref, start_rung.name
    prompts = _write_jsonl(
        ladder.out / "data" / "prompts.jsonl",
        [{"prompt": task.prompt(r), "answer": task.reference(r)} for r in task.train],
    )
    overrides = [
        f"model={start}",
        "adapter=lora",
        f"reward={_reward_spec(ladder)}",
        f"data.train={prompts}",
        f"train.max_steps={cfg.rl.steps}",
        f"train.lr={cfg.rl.lr}",
        f"rl.group={cfg.rl.group}",
        f"rl.prompts_per_step={cfg.rl.prompts_per_step}",
        f"rollout.max_new_tokens={task.max_new_tokens}",
        f"seed={cfg.seed}",
    ]
    result = RungResult("rl", "rl")
    run_dir = ladder.train_child(result, "rl", overrides, cfg.rl.steps)
    if start_rung:
        result.train_seconds += start_rung.train_seconds
        result.train_cpu_s += start_rung.train_cpu_s
        result.stored_bytes += start_rung.stored_bytes
    result.notes.append(f"GRPO on top of {start_name}")
    return ladder.assess(result, str(run_dir / "final"))


PROMPTING = ("zero_shot", "rules", "cot", "reflection", "few_shot", "self_consistency")
RUNGS = {
    **{name: prompting(name) for name in PROMPTING},
    **{name: sft(name) for name in ADAPTERS},
    "best_of_n": best_of_n,
    "rl": rl,
}
