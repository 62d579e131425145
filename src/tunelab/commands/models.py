"""`tunelab generate | score | select | best-of-n`: try a model, score answers with a reward model, rank
models by mean reward, and sample best-of-n answers."""

from __future__ import annotations

import argparse
import sys

from tunelab.commands import quiet_hf


def _render_options(args: argparse.Namespace, source: str):
    """What the model trained with (tunelab.json in a run's final/), overridden by flags given."""
    from tunelab.models.scorer import render_options_for

    opts = render_options_for(source)
    if args.separator is not None:
        opts.separator = args.separator
    if args.system is not None:
        opts.system = args.system
    return opts


def cmd_generate(args: argparse.Namespace) -> int:
    from tunelab.models.generation import generate
    from tunelab.models.load import load_model

    quiet_hf()
    model, tok = load_model(args.model, adapter=args.adapter)
    opts = _render_options(args, args.adapter or args.model)
    (text,) = generate(
        model,
        tok,
        [args.prompt],
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        opts=opts,
        seed=args.seed,
    )
    print(text)
    return 0


def _read_prompts(path: str, limit: int | None) -> list[str]:
    from tunelab.data.read import read_dataset
    from tunelab.errors import TunelabError

    prompts = [r["prompt"] for r in read_dataset(path, "prompts") if isinstance(r["prompt"], str)]
    if not prompts:
        raise TunelabError(f"{path} holds no text prompts.")
    return prompts[:limit] if limit else prompts


def gated_scorer(args: argparse.Namespace, use: str, **kwargs):
    """The reward model of `args.rm`, after its quality gate: a warning, or under --strict a refusal."""
    from tunelab.models.rm_gate import check_before_use
    from tunelab.models.scorer import RewardScorer

    scorer = RewardScorer(args.rm, **kwargs)
    check_before_use(args.rm, strict=args.strict, use=use, scorer=scorer)
    return scorer


def _rank(args: argparse.Namespace, use: str, rank, models, **options):
    """(the prompts of --prompts, `rank(scorer, models, prompts, ...)`): select and best-of-n answer the
    same prompts with the same gated reward model, generation length and seed."""
    prompts = _read_prompts(args.prompts, args.limit)
    quiet_hf()
    scorer = gated_scorer(args, use)
    return prompts, rank(
        scorer, models, prompts, max_new_tokens=args.max_new_tokens, seed=args.seed, **options
    )


def cmd_score(args: argparse.Namespace) -> int:
    import json

    from tunelab.data.read import check_dataset
    from tunelab.errors import DataError

    rows, problems = check_dataset(args.file, "preference")
    if problems:  # not preference pairs: prompt + completion / answer rows
        rows, problems = check_dataset(args.file, "pairs")
        if problems:
            raise DataError(
                problems, len(rows), hint="score takes pairs (prompt + completion) or preference rows"
            )
    quiet_hf()
    scorer = gated_scorer(args, "score", batch_size=args.batch_size)
    if "chosen" in rows[0]:
        chosen = scorer.score([(r["prompt"], r["chosen"]) for r in rows])
        rejected = scorer.score([(r["prompt"], r["rejected"]) for r in rows])
        out = [
            {**r, "reward_chosen": c, "reward_rejected": j}
            for r, c, j in zip(rows, chosen, rejected, strict=True)
        ]
        acc = sum(c > j for c, j in zip(chosen, rejected, strict=True)) / len(rows)
        print(f"pairwise accuracy {acc:.3f} on {len(rows)} pairs", file=sys.stderr)
    else:
        scores = scorer.score([(r["prompt"], r["completion"]) for r in rows])
        out = [{**r, "reward": s} for r, s in zip(rows, scores, strict=True)]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from tunelab.rank import select

    prompts, ranked = _rank(args, "select", select, args.candidates)
    table = Table(title=f"candidates ranked by mean reward on {len(prompts)} prompts")
    for col in ("rank", "candidate", "mean reward", "95% interval"):
        table.add_column(col)
    for i, c in enumerate(ranked, 1):
        table.add_row(str(i), c.name, f"{c.mean_reward:.3f}", f"± {c.ci95:.3f}")
    Console().print(table)
    result = [
        {"candidate": c.name, "mean_reward": c.mean_reward, "ci95": c.ci95, "answers": c.answers}
        for c in ranked
    ]
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"prompts": prompts, "ranking": result}, f, indent=1)
    return 0


def cmd_best_of_n(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from tunelab.rank import best_of_n, write_rejection_sampling

    _, results = _rank(args, "best-of-n", best_of_n, args.model, n=args.n, temperature=args.temperature)
    for r in results:
        print(
            json.dumps(
                {"prompt": r["prompt"], "best": r["best"], "reward": r["rewards"][0]}, ensure_ascii=False
            )
        )
    if args.out:
        paths = write_rejection_sampling(results, Path(args.out))
        print(
            f"wrote {paths['sft']} (SFT pairs), {paths['preference']} (best vs worst), {paths['all']}",
            file=sys.stderr,
        )
    return 0
