"""Pairs sampled from models: every system answers every prompt, written as a pairs JSONL.

    # project.yaml
    pairs: sampled.jsonl              # written on the first `label serve`, read as it is afterwards
    sample:
      prompts: prompts.jsonl          # kind prompts
      systems: {base: smollm2-135m, sft: runs/sft/final}

The file is the cache: it is written once (so a restart never re-samples and changes the items) and
can be read, edited or versioned like a hand-made pairs file. Each system's model is loaded, answers
all prompts in batches, and is freed before the next one.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.label.project import Project

BATCH = 16


def sample_pairs(project: Project) -> Path:
    """Write the project's pairs file from its `sample` section, unless the file already exists."""
    import gc

    from tunelab.data.read import read_dataset
    from tunelab.generation import generate
    from tunelab.models.load import load_model
    from tunelab.rm import render_options_for

    spec = project.cfg.sample
    out = project.resolve(project.cfg.pairs)
    if spec is None or out.exists():
        return out
    rows = read_dataset(project.resolve(spec.prompts), "prompts")
    prompts = [r["prompt"] for r in rows]
    if not all(isinstance(p, str) for p in prompts):
        raise TunelabError(f"{spec.prompts}: sampling for labelling takes text prompts, not chats.")
    answers: dict[str, list[str]] = {}
    for name, ref in spec.systems.items():
        model, tok = load_model(ref)
        opts = render_options_for(ref)
        texts: list[str] = []
        for start in range(0, len(prompts), BATCH):
            texts += generate(
                model,
                tok,
                prompts[start : start + BATCH],
                max_new_tokens=spec.max_new_tokens,
                temperature=spec.temperature,
                opts=opts,
                seed=spec.seed + start,
            )
        answers[name] = [t.strip() or "(empty answer)" for t in texts]
        print(f"tunelab label: {name} ({ref}) answered {len(prompts)} prompt(s)", flush=True)
        del model
        gc.collect()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for i, prompt in enumerate(prompts):
            row = {"prompt": prompt, "answers": [{"system": s, "text": answers[s][i]} for s in spec.systems]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)  # all or nothing: a crash mid-way leaves no half file to be read as the cache
    return out
