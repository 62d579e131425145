"""The config sections every training stage shares, and the stage configs built from them.

Keys mean the same in every stage (../shared/DESIGN.md): `model`, `adapter`, `lora.*`, `prompt.*`,
`data.*`, `train.*`, `seed`, `out`, `resume`, `distributed`. Every field carries its help text.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from tunelab.config.load import SEED_MAX, Section

# Variant names are plain strings here: the config imports no behaviour, and each name is checked
# against its table (the one list of names) where it is used, before any model loads
# (tunelab.config.variants.pick; docs/decisions.md, "variant names").
Adapter = str  # a name in tunelab.models.adapters.ADAPTERS


PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
PRECISION_HELP = (
    "auto (bf16 on a GPU that has it, or on a CPU where a measured bf16 matmul is clearly faster; else "
    "fp32) | fp32 | bf16 | fp16 (CUDA, with a gradient scaler); weights and optimizer state stay fp32"
)


class LoraSection(Section):
    r: int = Field(16, ge=1, le=4096, description="rank of the low-rank pair A (r x in), B (out x r)")
    alpha: float = Field(32, gt=0, le=65_536, description="scale: the update is (alpha / r) * B @ A")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    targets: list[Annotated[str, StringConstraints(min_length=1)]] | Literal["all-linear", "auto"] = Field(
        "auto",
        union_mode="left_to_right",
        description="module names to adapt; 'auto' = attention q/k/v/o for the architecture",
    )

    @field_validator("targets")
    @classmethod
    def _some_targets(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("name at least one module (e.g. [q_proj, v_proj]), or 'auto'")
        return value


class PromptSection(Section):
    tokens: int = Field(
        20, ge=1, le=10_000, description="number of virtual tokens (prompt and prefix tuning)"
    )
    init_text: str | None = Field(
        None, description="initialise the virtual tokens from this text's embeddings"
    )


class DataSection(Section):
    train: str | None = Field(None, description="training data: a JSONL/JSON/Parquet/CSV file")
    eval: str | None = Field(None, description="held-out data; if unset, eval_split of train is held out")
    eval_split: float = Field(0.0, ge=0, lt=1, description="share of train held out when data.eval is unset")
    separator: str = Field(
        "\n### Answer:\n", description="between prompt and completion for models without a chat template"
    )
    instruction: str | None = Field(None, description="a fixed instruction put before every input")
    system: str | None = Field(None, description="system message for chat-template models")
    overlong: Literal["truncate", "drop"] = Field(
        "truncate", description="rows longer than train.max_len: cut the completion's tail, or drop the row"
    )
    pack: bool = Field(False, description="pack several rows into one sequence (no attention across rows)")
    group_by_length: bool = Field(
        False, description="batch rows of similar length together (less padding, still shuffled)"
    )


class GuardSection(Section):
    spike: float = Field(
        5.0, gt=1, le=1e9, description="a loss above spike x the running median of recent losses is skipped"
    )
    min_jump: float = Field(
        1.0,
        ge=0,
        le=1e9,
        description="... and only when it is also this much above the median (near-zero losses jitter)",
    )
    window: int = Field(50, ge=5, le=1_000_000, description="recent accepted losses the median is taken over")
    max_bad: int = Field(
        3,
        ge=1,
        le=1_000_000_000,
        description="skipped updates in a row before rolling back to the last checkpoint",
    )
    lr_factor: float = Field(0.5, gt=0, le=1, description="learning rate multiplier applied at each rollback")
    max_skipped_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="a run that skipped more than this share of its updates ends with an error (1 = never)",
    )


class EarlyStopSection(Section):
    patience: int | None = Field(
        None,
        ge=1,
        le=1_000_000_000,
        description="stop after this many evaluations without improvement; null = off",
    )
    metric: str = Field("eval_loss", description="the metric watched (any eval_* in metrics.jsonl)")
    mode: Literal["min", "max"] = Field("min", description="whether lower or higher is better")


class TrainSection(Section):
    max_steps: int | None = Field(
        None, ge=1, le=1_000_000_000, description="optimizer steps; overrides epochs when set"
    )
    epochs: float = Field(1.0, gt=0, le=10_000, description="passes over the training data")
    batch_size: int = Field(8, ge=1, le=1_000_000, description="rows per micro-batch on each process")
    grad_accum: int = Field(1, ge=1, le=1_000_000, description="micro-batches per optimizer step")
    lr: float = Field(2e-4, gt=0, le=10, description="peak learning rate")
    weight_decay: float = Field(
        0.0, ge=0, le=10, description="AdamW decoupled weight decay (never on norms/biases)"
    )
    warmup: float = Field(
        0.03, ge=0, le=1_000_000, description="warm-up: a share of total steps (<1) or a step count"
    )
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="lr after warm-up")
    max_grad_norm: float | None = Field(
        1.0, gt=0, le=1e6, description="clip gradients to this global norm (> 0); null = off"
    )
    max_len: int = Field(1024, ge=8, le=1_048_576, description="longest sequence in tokens")
    activation_checkpointing: bool = Field(
        False,
        description="recompute each decoder layer's activations in backward instead of keeping them "
        "(HF gradient checkpointing, non-reentrant): less memory, about one more forward of time; "
        "the loss and gradients are the same",
    )
    save_every: int | None = Field(
        None, ge=1, le=1_000_000_000, description="checkpoint every N steps (and at the end)"
    )
    keep_last: int = Field(2, ge=1, le=1_000_000_000, description="checkpoints to keep")
    keep_optimizer: bool = Field(
        False,
        description="keep the checkpoints' optimizer state when the run finishes (to train further with "
        "the same AdamW moments); off: final/ and the weights stay, the moments go",
    )
    eval_every: int | None = Field(
        None, ge=1, le=1_000_000_000, description="evaluate on data.eval every N steps"
    )
    max_seconds: float | None = Field(
        None,
        gt=0,
        le=1e9,
        description="wall-time cap: stop (evaluate, keep the best) once training has run this long",
    )
    log_every: int = Field(1, ge=1, le=1_000_000_000, description="log metrics every N steps")
    precision: PrecisionName = Field("auto", description=PRECISION_HELP)
    guard: GuardSection = Field(default_factory=GuardSection, description="divergence guard")
    early_stop: EarlyStopSection = Field(
        default_factory=EarlyStopSection, description="early stopping; the best checkpoint becomes final/"
    )

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainSection:
        if self.warmup >= 1 and self.max_steps and self.warmup > self.max_steps:
            raise ValueError(
                f"a warm-up of {self.warmup:g} steps is longer than train.max_steps={self.max_steps}; "
                "give train.warmup as a share (< 1) or fewer steps"
            )
        return self


class ModelSection(Section):
    name: str = Field(
        "smollm2-135m",
        min_length=1,
        description="model: smollm2-135m, tiny:llama, an HF folder, a .gguf file",
    )
    dropout: float | None = Field(
        None, ge=0, lt=1, description="override every dropout of the model (full fine-tuning knob)"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights dtype")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value):
        return {"name": value} if isinstance(value, str) else value  # `model: tiny:llama` is shorthand


class DeepSpeedSection(Section):
    zero_stage: Literal[2, 3] = Field(
        2, description="ZeRO stage: 2 shards optimizer state and gradients, 3 also the weights"
    )
    offload: Literal["none", "cpu"] = Field("none", description="keep optimizer state in CPU memory")


class StageConfig(Section):
    """Keys common to every training stage."""

    model: ModelSection = Field(
        default_factory=ModelSection, description="the base model (a name is shorthand for model.name)"
    )
    adapter: Adapter = Field("none", description="none (full fine-tuning) | lora | dora | prompt | prefix")
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA / DoRA options")
    prompt: PromptSection = Field(default_factory=PromptSection, description="prompt / prefix tuning options")
    data: DataSection = Field(
        default_factory=DataSection, description="where the data is and how to render it"
    )
    train: TrainSection = Field(default_factory=TrainSection, description="the training loop")
    seed: int = Field(
        0, ge=0, le=SEED_MAX, description="seed for weights of new parameters, data order and sampling"
    )
    out: str | None = Field(None, description="run folder; default runs/<stage>-<time>")
    resume: str = Field("auto", description="auto (newest complete checkpoint in out) | never | PATH")
    distributed: Literal["none", "ddp", "fsdp", "deepspeed"] = Field(
        "none",
        description="multi-process engine under torchrun / accelerate launch (none = ddp when launched on several)",
    )
    deepspeed: DeepSpeedSection = Field(
        default_factory=DeepSpeedSection, description="DeepSpeed options (distributed=deepspeed, GPUs)"
    )
    merge: bool = Field(
        False, description="also write the LoRA/DoRA adapter merged into the base model to merged/"
    )

    @field_validator("out")
    @classmethod
    def _out_is_a_folder(cls, value: str | None) -> str | None:
        return writable_folder(value)


def writable_folder(value: str | None) -> str | None:
    """`out=`: a folder that exists or can be made, and can be written to. Checked when the config is read,
    before any model loads (a run would otherwise fail only after loading everything)."""
    if not value:
        return value
    path = Path(value).expanduser()
    if path.is_file():
        raise ValueError(f"out={value} is a file; the run folder must be a folder")
    probe_in = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not probe_in.is_dir():
        raise ValueError(f"out={value}: {probe_in} is not a folder, so the run folder cannot be made there")
    try:  # a real write: permissions, a read-only file system, a full disk or a file-size limit all show
        with tempfile.TemporaryFile(dir=probe_in) as f:
            f.write(b"tunelab")
            f.flush()
    except OSError as exc:
        raise ValueError(f"out={value}: cannot write in {probe_in} ({exc.strerror or exc})") from None
    return value


class PretrainConfig(StageConfig):
    adapter: Adapter = Field("none", description="pre-training trains the whole model")
    train: TrainSection = Field(
        default_factory=lambda: TrainSection(lr=3e-4, weight_decay=0.1), description="the training loop"
    )


class RMGateSection(Section):
    strict: bool = Field(
        False,
        description="refuse a reward model that did not pass its quality gate (default: warn and use it)",
    )
    resamples: int = Field(
        1000, ge=100, le=1_000_000, description="bootstrap resamples behind the gate's 95% intervals"
    )


class RewardEvalSection(Section):
    rm: str | None = Field(
        None, description="reward model (a `tunelab rm` run's final/) that scores sampled answers"
    )
    prompts: str | None = Field(
        None, description="held-out prompts (kind prompts); default: the held-out split's prompts"
    )
    n_prompts: int = Field(16, ge=1, le=1_000_000_000, description="prompts answered at each evaluation")
    max_new_tokens: int = Field(64, ge=1, le=65_536, description="longest sampled answer")
    temperature: float = Field(
        0.0, ge=0, le=100, description="0 = greedy answers (the same prompts every time)"
    )
    patience: int | None = Field(
        2,
        ge=1,
        le=1_000_000_000,
        description="stop when the mean reward has not improved for this many evaluations",
    )


class TaskEvalSection(Section):
    task: str | None = Field(
        None, description="a task (YAML, built-in, reasoning_gym:NAME) whose metric scores greedy answers"
    )
    rows: str | None = Field(None, description="validation rows in the task's own fields (JSONL)")
    patience: int | None = Field(
        3,
        ge=1,
        le=1_000_000,
        description="stop when the task metric has not improved for this many evaluations",
    )


class SFTConfig(StageConfig):
    reward_eval: RewardEvalSection = Field(
        default_factory=RewardEvalSection,
        description="every train.eval_every steps: answer held-out prompts, score with a reward model, stop when it stops improving",
    )
    task_eval: TaskEvalSection = Field(
        default_factory=TaskEvalSection,
        description="every train.eval_every steps: greedy answers to validation rows, scored with a task's metric (eval_task), stop when it stops improving",
    )
    rm_gate: RMGateSection = Field(
        default_factory=RMGateSection,
        description="the reward model's quality gate before reward_eval uses it",
    )


class RMSection(Section):
    center: float = Field(
        0.0, ge=0, le=1000, description="reward centring: penalty coefficient on (r_w + r_l)^2 (e.g. 0.01)"
    )


class RMConfig(StageConfig):
    adapter: Adapter = Field(
        "lora", description="none (full fine-tuning) | lora | dora; the scalar head always trains"
    )
    rm: RMSection = Field(default_factory=RMSection, description="reward-model options")
    rm_gate: RMGateSection = Field(
        default_factory=RMGateSection, description="the quality gate run on the held-out pairs at the end"
    )
    train: TrainSection = Field(
        default_factory=lambda: TrainSection(lr=1e-4, max_len=512), description="the training loop"
    )


class RLSection(Section):
    group: int = Field(
        8, ge=1, le=4096, description="completions sampled per prompt (GRPO/RLOO baselines use the group)"
    )
    prompts_per_step: int = Field(2, ge=1, le=1_000_000_000, description="prompts per optimizer step")
    clip: float = Field(0.2, gt=0, le=100, description="PPO ratio clip (and value clip)")
    ppo_epochs: int = Field(1, ge=1, le=1000, description="updates per rollout (PPO); 1 = strictly on-policy")
    gamma: float = Field(1.0, ge=0, le=1, description="PPO discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    vf_coef: float = Field(0.1, ge=0, le=1000, description="PPO value-loss weight")
    samples_per_step: int = Field(
        4, ge=0, le=1_000_000_000, description="completions written to samples.jsonl each step"
    )


class KLSection(Section):
    beta: float = Field(
        0.04, ge=0, le=1000, description="weight of the KL to the reference model (0 = no leash)"
    )
    mode: Literal["loss", "reward"] = Field(
        "loss", description="KL as a loss term, or subtracted from the reward"
    )
    estimator: str = Field(  # a name in tunelab.losses.policy.KL_ESTIMATORS
        "k3", description="KL estimator: k1 log-ratio, k2 half squared, k3 Schulman"
    )


class RolloutSection(Section):
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="hf generate (CPU/GPU) or vllm (GPU, optional extra)"
    )
    max_new_tokens: int = Field(64, ge=1, le=65_536, description="longest completion")
    temperature: float = Field(1.0, gt=0, le=100, description="sampling temperature (log-probs use the same)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    stop: list[str] = Field(
        default_factory=list, description="stop strings (the completion text ends before them)"
    )
    extra_eos_ids: list[int] = Field(default_factory=list, description="more token ids that end a completion")
    vllm_memory: float = Field(
        0.3, gt=0, lt=1, description="vLLM: share of GPU memory for its weights and KV cache"
    )
    tis_cap: float | None = Field(
        2.0,
        gt=0,
        le=1e9,
        description="vLLM, or HF sampling in bf16/fp16: cap of the truncated importance weight pi_trainer / pi_sampler per token (null = off)",
    )


class AlertSection(Section):
    kl: float = Field(1.0, gt=0, le=1e9, description="alert when the mean per-token KL exceeds this")
    entropy_drop: float = Field(
        0.2, gt=0, lt=1, description="alert when entropy falls below this share of its start"
    )
    length_growth: float = Field(
        2.0, gt=1, le=1e9, description="alert when completions grow this much and mostly hit the limit"
    )
    on_hacking: Literal["warn", "stop", "rollback"] = Field(
        "warn",
        description="when the hacking watch fires: warn, stop the run, or stop with final/ = the best model by the held-out measure",
    )
    hacking_window: int = Field(
        6, ge=3, le=10_000, description="evaluations the hacking watch's trend tests look at (the last N)"
    )
    hacking_level: float = Field(
        0.05, gt=0, lt=1, description="one-sided level of each trend test (reward up, held-out measure down)"
    )


class WatchSection(Section):
    metric: str | None = Field(
        None,
        description="held-out measure: a reward name scored on greedy answers to held-out prompts (exact, task:NAME, rm:OTHER); default exact when they have answers",
    )
    n_prompts: int = Field(
        16, ge=1, le=1_000_000_000, description="held-out prompts answered at each evaluation"
    )
    max_new_tokens: int | None = Field(
        None, ge=1, le=65_536, description="longest held-out answer; default rollout.max_new_tokens"
    )
    final_by: Literal["last", "heldout"] = Field(
        "last", description="final/: the last step's model, or the best one by the held-out measure"
    )


class RLConfig(StageConfig):
    adapter: Adapter = Field(
        "lora", description="none (frozen copy as reference) | lora | dora (adapter off = reference)"
    )
    algo: str = Field(
        "grpo", description="policy-gradient variant: grpo | rloo | reinforce | ppo (tunelab.rl.algos.ALGOS)"
    )
    lora: LoraSection = Field(
        default_factory=lambda: LoraSection(dropout=0.0),
        description="LoRA options (no dropout: the sampler and the trainer then see the same policy)",
    )
    reward: str | list[str | dict] = Field(
        "exact",
        description="exact | number | regex:P | length | rm:PATH | reasoning_gym:TASK | module:fn, or a weighted list",
    )
    rl: RLSection = Field(default_factory=RLSection, description="algorithm options")
    kl: KLSection = Field(default_factory=KLSection, description="the leash to the starting model")
    rollout: RolloutSection = Field(default_factory=RolloutSection, description="sampling")
    alerts: AlertSection = Field(default_factory=AlertSection, description="reward-hacking alarms")
    watch: WatchSection = Field(
        default_factory=WatchSection,
        description="the hacking watch: a held-out measure every train.eval_every steps (held-out prompts: data.eval or data.eval_split)",
    )
    rm_gate: RMGateSection = Field(
        default_factory=RMGateSection, description="the quality gate of a reward=rm: reward model"
    )
    train: TrainSection = Field(
        default_factory=lambda: TrainSection(
            lr=1e-5, max_steps=50, batch_size=1, warmup=0.0, schedule="constant"
        ),
        description="the training loop (batch_size is unused: a step is prompts_per_step x group completions)",
    )


class DPOSection(Section):
    beta: float = Field(
        0.1, gt=0, le=1000, description="DPO temperature: how far from the reference the policy may move"
    )
    loss: str = Field("sigmoid", description="sigmoid (DPO) or ipo (tunelab.losses.preference.DPO_LOSSES)")


class DPOConfig(StageConfig):
    adapter: Adapter = Field(
        "lora", description="none (frozen copy as reference) | lora | dora (adapter off = reference)"
    )
    dpo: DPOSection = Field(default_factory=DPOSection, description="DPO options")
    train: TrainSection = Field(
        default_factory=lambda: TrainSection(lr=5e-5), description="the training loop"
    )


class PromptingOptions(Section):
    max_new_tokens: int | None = Field(
        None, ge=1, le=65_536, description="longest direct answer; default: the task's"
    )
    rules_as: Literal["system", "user"] = Field(
        "system", description="rules as a system message, or as a preamble of the user turn"
    )
    cot_instruction: str = Field(
        "Think step by step. Then write the final answer on the last line, starting with 'Answer:'.",
        description="what the cot and self_consistency strategies append to the prompt",
    )
    cot_max_new_tokens: int = Field(256, ge=1, le=65_536, description="longest chain of thought")
    reflection_rounds: int = Field(2, ge=1, le=1_000_000_000, description="most critique + revision rounds")
    critique: str = Field(
        "Check your answer above against the request. If it is fully correct, reply with exactly: "
        "NO ERRORS. Otherwise list each error in one short line.",
        description="the reflection strategy's critique request",
    )
    revise: str = Field(
        "Now write the corrected answer only, fixing those errors, in the requested format.",
        description="the reflection strategy's revision request",
    )
    shots: int = Field(
        4, ge=0, le=1_000_000_000, description="few-shot examples wanted (fewer when they do not fit)"
    )
    shot_selection: Literal["fixed", "random", "similar"] = Field(
        "random", description="which examples: the pool's first k, random, or most similar to the question"
    )
    max_context: int | None = Field(
        None,
        ge=8,
        le=1_048_576,
        description="token budget of prompt + answer; default: the model's context length",
    )
    samples: int = Field(
        5, ge=1, le=1_000_000_000, description="answers sampled by self_consistency and best_of_n"
    )
    temperature: float = Field(
        0.7, gt=0, le=100, description="sampling temperature of self_consistency and best_of_n"
    )
    rm: str | None = Field(
        None, description="reward model that picks the best_of_n answer (a `tunelab rm` run)"
    )
    rm_strict: bool = Field(
        False,
        description="refuse a best_of_n reward model that did not pass its quality gate (default: warn)",
    )


Strategy = str  # a name in tunelab.prompting.strategies.STRATEGIES


class EvalSection(Section):
    limit: int | None = Field(
        None, ge=1, le=1_000_000_000, description="evaluate the first N held-out rows only"
    )
    batch_size: int = Field(
        16, ge=1, le=1_000_000, description="prompts per generation batch (answers do not depend on it)"
    )
    split: Literal["eval", "train"] = Field(
        "eval", description="which rows are scored (train: the over-fitting check)"
    )
    resamples: int = Field(
        1000, ge=100, le=1_000_000, description="bootstrap resamples behind the 95% intervals"
    )


class JudgeSection(Section):
    model: str | None = Field(
        None, description="judge model for pairwise comparison of strategies' answers; null = no judge"
    )
    baseline: str | None = Field(
        None, description="strategy every other one is compared with; default: the first"
    )
    rubric: str | None = Field(
        None, description="what makes an answer better; default: honest, harmless, helpful"
    )


class EvalConfig(Section):
    model: ModelSection = Field(
        default_factory=ModelSection,
        description="the model: a name, an HF folder, or a trained run's final/ (adapter or full model)",
    )
    task: str = Field("extract", description="a task YAML, a built-in task (extract), or reasoning_gym:NAME")
    strategy: Strategy | list[Strategy] = Field(
        "zero_shot",
        description="one strategy or a list: zero_shot|rules|cot|reflection|few_shot|self_consistency|best_of_n",
    )
    prompting: PromptingOptions = Field(default_factory=PromptingOptions, description="strategy options")
    eval: EvalSection = Field(default_factory=EvalSection, description="which rows, how batched, intervals")
    judge: JudgeSection = Field(default_factory=JudgeSection, description="LLM-as-judge, both answer orders")
    seed: int = Field(
        0, ge=0, le=SEED_MAX, description="seed for few-shot choice, sampling and the bootstrap"
    )
    precision: PrecisionName = Field("auto", description=PRECISION_HELP)
    out: str | None = Field(None, description="output folder; default runs/eval-<time>")

    _out_writable = field_validator("out")(lambda cls, v: writable_folder(v))

    @property
    def strategies(self) -> list[str]:
        return [self.strategy] if isinstance(self.strategy, str) else list(self.strategy)


Rung = Literal[
    "zero_shot",
    "rules",
    "cot",
    "reflection",
    "few_shot",
    "self_consistency",
    "prompt_tuning",
    "lora",
    "full",
    "best_of_n",
    "rl",
]
TRAINING_RUNGS = ("prompt_tuning", "lora", "full")


class RungTrain(Section):
    steps: int = Field(
        20,
        ge=1,
        le=1_000_000_000,
        description="optimizer steps: a cap (training rungs stop earlier on a plateau)",
    )
    lr: float = Field(2e-4, gt=0, le=10, description="peak learning rate")
    batch_size: int = Field(8, ge=1, le=1_000_000, description="rows per step")
    seconds: float | None = Field(
        None, gt=0, le=1e9, description="wall-time cap on training (training rungs)"
    )
    eval_every: int = Field(
        4, ge=1, le=1_000_000_000, description="score the validation rows every N steps (training rungs)"
    )
    patience: int = Field(
        3, ge=1, le=1_000_000, description="evaluations without a better validation metric before stopping"
    )


class LadderValidation(Section):
    rows: int = Field(
        24,
        ge=1,
        le=1_000_000_000,
        description="validation rows carved from the training rows (never the held-out ones)",
    )
    share: float = Field(0.2, gt=0, lt=1, description="... and at most this share of the training rows")


class LadderUsage(Section):
    answers: int = Field(
        10_000, ge=0, le=10**15, description="answers expected in use: turns seconds per answer into a total"
    )


class LadderLimits(Section):
    memory_mb: float | None = Field(
        None, gt=0, le=1e12, description="rule out rungs whose peak memory is above this"
    )
    storage_mb: float | None = Field(
        None, gt=0, le=1e12, description="rule out rungs that store more than this"
    )


class LadderCurves(Section):
    rungs: list[Literal["prompt_tuning", "lora", "full"]] = Field(
        default_factory=list, description="training rungs retrained on shares of the training rows"
    )
    fractions: list[float] = Field(
        default_factory=lambda: [0.25, 0.5, 1.0], description="shares of the training rows (0 < f <= 1)"
    )

    @field_validator("fractions")
    @classmethod
    def _shares(cls, value: list[float]) -> list[float]:
        if not value or any(not 0 < f <= 1 for f in value):
            raise ValueError("every fraction must be in (0, 1]")
        return sorted(set(value))


class LadderEvalSection(Section):
    limit: int = Field(
        200, ge=1, le=1_000_000_000, description="held-out rows every rung is scored on (all, up to this)"
    )
    train_limit: int = Field(
        16, ge=0, le=1_000_000_000, description="training rows scored too, for the over-fitting gap (0 = off)"
    )
    batch_size: int = Field(16, ge=1, le=1_000_000, description="prompts per generation batch")


class LadderBestOfN(Section):
    policy: Literal["base", "sft"] = Field(
        "base",
        description="who samples the n answers: the base model (no training but the reward model's), or the best SFT rung",
    )
    samples: int = Field(
        4,
        ge=2,
        le=1_000_000_000,
        description="answers sampled per prompt, for the RM's pairs and at test time",
    )
    prompts: int = Field(
        48, ge=4, le=1_000_000_000, description="training prompts sampled to build the RM's preference pairs"
    )
    pairs: str | None = Field(
        None,
        description="preference pairs for the reward model (e.g. human labels); default: sampled and ranked",
    )
    rm: RungTrain = Field(
        default_factory=lambda: RungTrain(steps=20, lr=1e-4, batch_size=8),
        description="reward-model training",
    )


class LadderRL(Section):
    steps: int = Field(8, ge=1, le=1_000_000_000, description="GRPO steps on top of the best SFT rung")
    lr: float = Field(2e-5, gt=0, le=10, description="learning rate")
    group: int = Field(4, ge=2, le=4096, description="completions per prompt")
    prompts_per_step: int = Field(2, ge=1, le=1_000_000_000, description="prompts per step")


class LadderRetention(Section):
    text: str | None = Field(
        None, description="general text for perplexity; default: tunelab's built-in prose"
    )
    task: str | None = Field("capitals", description="a second task the base model is good at; null = skip")


class LadderConfig(Section):
    task: str = Field("extract", description="a task YAML, a built-in task, or reasoning_gym:NAME")
    model: ModelSection = Field(
        default_factory=ModelSection, description="the base model every rung starts from"
    )
    rungs: list[Rung] = Field(
        default_factory=lambda: [
            "zero_shot",
            "rules",
            "cot",
            "few_shot",
            "prompt_tuning",
            "lora",
            "full",
            "best_of_n",
            "rl",
        ],
        description="rungs to run, in order (later ones re-use earlier ones: best_of_n and rl start from the best SFT)",
    )
    eval: LadderEvalSection = Field(default_factory=LadderEvalSection, description="how rungs are scored")
    prompting: PromptingOptions = Field(
        default_factory=PromptingOptions, description="prompting rungs' options"
    )
    prompt_tuning: RungTrain = Field(
        default_factory=lambda: RungTrain(steps=200, lr=3e-2), description="prompt tuning: 20 virtual tokens"
    )
    lora: RungTrain = Field(
        default_factory=lambda: RungTrain(steps=200, lr=3e-4), description="LoRA r16 on q/k/v/o"
    )
    full: RungTrain = Field(
        default_factory=lambda: RungTrain(steps=200, lr=2e-5),
        description="full fine-tuning (small lr, dropout 0.1)",
    )
    max_len: int = Field(256, ge=16, le=1_048_576, description="longest training sequence")
    precision: PrecisionName = Field(
        "auto", description="every rung's training, sampling and scoring: " + PRECISION_HELP
    )
    best_of_n: LadderBestOfN = Field(
        default_factory=LadderBestOfN, description="reward model + best-of-n rung"
    )
    rl: LadderRL = Field(default_factory=LadderRL, description="GRPO rung")
    retention: LadderRetention = Field(default_factory=LadderRetention, description="forgetting checks")
    tolerance: float = Field(
        0.05,
        ge=0,
        le=1e9,
        description="a rung stays a candidate unless resolved as worse than the best by more than this",
    )
    target: float | None = Field(
        None, ge=-1e12, le=1e12, description="an absolute quality bar: rungs below it are ruled out"
    )
    cost_margin: float = Field(
        1.5,
        ge=1,
        le=1e6,
        description="costs within this factor of the lowest count as equal: the next cost decides",
    )
    usage: LadderUsage = Field(default_factory=LadderUsage, description="expected use (the cost model)")
    limits: LadderLimits = Field(default_factory=LadderLimits, description="hard limits that rule rungs out")
    validation: LadderValidation = Field(
        default_factory=LadderValidation, description="rows the training rungs stop on"
    )
    curves: LadderCurves = Field(default_factory=LadderCurves, description="learning curves over data size")
    seeds: int = Field(
        1, ge=1, le=1000, description="train every training rung with this many seeds (spread reported)"
    )
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seed for every rung")
    keep_models: Literal["none", "recommended", "all"] = Field(
        "recommended",
        description="trained models kept when the ladder ends: none, the recommended rung's, or all (each rung's runs/<rung>.cmd retrains it); checkpoints never",
    )
    out: str | None = Field(None, description="report folder; default runs/ladder-<time>")

    _out_writable = field_validator("out")(lambda cls, v: writable_folder(v))
