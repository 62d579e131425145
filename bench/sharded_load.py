"""By-hand measurement: FSDP2 full fine-tuning with sharded loading on 2 CPU processes vs one process.

    python -m bench.sharded_load                 # a random 374M-parameter llama (1.5 GB fp32), 4 steps
    python -m bench.sharded_load --layers 8      # smaller and quicker

A random model is built from a config and saved as an ordinary HF folder; then the same SFT run
(16 rows, global batch 8, 4 steps, a checkpoint every 2) goes once on one process and once on 2 torchrun
processes with distributed=fsdp, and once more on 2 processes killed after step 3 and resumed.
Printed: each rank's peak RSS against the one-process peak, the largest loss difference, and whether
the resumed run equals the uninterrupted one. Not a test: it needs ~12 GB of memory and minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROWS = [
    {"prompt": f"Write the number {i} in words, then say something about it.", "completion": f"{w}, a number."}
    for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve "
                          "thirteen fourteen fifteen".split())
]  # fmt: skip


def build(folder: Path, layers: int) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunelab.models.tiny import tiny_tokenizer

    config = LlamaConfig(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        vocab_size=32000,
        tie_word_embeddings=False,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def run(cmd: list[str], env: dict, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["nice", "-n", "10", *cmd], capture_output=True, text=True, env=env)
    if check and out.returncode != 0:
        sys.exit(out.stderr[-4000:])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--work", default=None, help="folder for the model and runs (default: a temp dir)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps (default 4)")
    parser.add_argument("--no-resume", action="store_true", help="skip the killed-and-resumed run")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="sharded_load_"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "model"
    if not (model_dir / "config.json").is_file():
        params = build(model_dir, args.layers)
        print(f"built {params:,} parameters ({params * 4 / 1e9:.2f} GB fp32) in {model_dir}", flush=True)
    data = work / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = [
        "sft",
        f"model={model_dir}",
        f"data.train={data}",
        "adapter=none",
        f"train.max_steps={args.steps}",
        "train.lr=1e-4",
        "train.save_every=2",
        "train.max_len=256",
        "train.keep_last=1",
    ]
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2"]
    tunelab = [sys.executable, "-m", "tunelab"]
    run([*tunelab, *common, "train.batch_size=8", f"out={work / 'one'}"], env)
    two = [*common, "train.batch_size=4", "distributed=fsdp"]
    out = run([*torchrun, "-m", "tunelab", *two, f"out={work / 'two'}"], env)
    loaded = [line for line in out.stderr.splitlines() if line.startswith("sharded load")]
    if args.no_resume:
        return report(work, loaded, resumed=False)
    killed = Path(__file__).parents[1] / "tests" / "helpers" / "killed_run.py"  # SIGKILL after step 3
    crash = run([*torchrun, str(killed), "3", *two, f"out={work / 'resumed'}"], env, check=False)
    assert crash.returncode != 0
    run([*torchrun, "-m", "tunelab", *two, f"out={work / 'resumed'}", "resume=auto"], env)
    report(work, loaded, resumed=True)


def report(work: Path, loaded: list[str], resumed: bool) -> None:
    def summary(name):
        return json.loads((work / name / "summary.json").read_text())

    def losses(name):
        return [json.loads(line)["loss"] for line in (work / name / "metrics.jsonl").read_text().splitlines()]

    single = summary("one")["peak_memory_mb"]
    ranks = summary("two")["peak_rss_mb_per_rank"]
    gap = max(abs(a - b) for a, b in zip(losses("one"), losses("two")))
    print("\n".join(loaded))
    print(f"one process: peak {single:,.0f} MB; losses {losses('one')}")
    print(f"2 x FSDP2 sharded: peaks {ranks} MB = {[round(r / single, 3) for r in ranks]} x one process")
    print(f"largest loss difference one vs two: {gap:.2e}; work folder {work}")
    if resumed:
        resumed_gap = max(abs(a - b) for a, b in zip(losses("two"), losses("resumed")))
        print(
            f"resumed vs uninterrupted: largest loss difference {resumed_gap:.2e}; "
            f"resumed run's peaks {summary('resumed')['peak_rss_mb_per_rank']} MB"
        )


if __name__ == "__main__":
    main()
