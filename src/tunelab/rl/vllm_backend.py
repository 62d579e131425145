"""Rollouts sampled by vLLM (GPU; `pip install 'tunelab[vllm]'`), trained by the one loop.

    tunelab rl configs/rl.yaml rollout.backend=vllm

vLLM runs in the training process (colocated, one engine per rank) and gets the policy's current
weights before each step: a LoRA policy is saved as a PEFT adapter and handed over as a new
`LoRARequest` (vLLM loads PEFT folders as they are); a fully fine-tuned policy's weights are loaded
into the engine's model in place. The trainer recomputes the log-probs of the sampled tokens in its
own forward (`old_logp`); the difference to vLLM's log-probs is logged (`vllm_logp_mismatch`), and with
`rollout.tis_cap` each token's policy loss is weighted by min(pi_trainer / pi_vllm, cap), the truncated
importance-sampling correction for sampling from a slightly different distribution.

Nothing here runs on a CPU: tests/test_vllm.py is skipped without a GPU and the vllm package;
bench/vllm_rollout.py is the script a GPU machine runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.errors import TunelabError


@dataclass
class Sampled:
    """One completion as a sampler returns it."""

    token_ids: list[int]  # generated tokens, the stopping EOS included when there was one
    logp: list[float]  # the sampler's log-prob of each (after temperature)


def layout(prompts: list[list[int]], completions: list[Sampled], group: int, pad_id: int):
    """(sequences (N, P + C), prompt_mask (N, P), sampler_logp (N, C)) in the HF rollout's layout:
    prompts left-padded to P, completions right-padded to C. completions are `group` per prompt."""
    P = max(len(p) for p in prompts)
    C = max(1, max(len(c.token_ids) for c in completions))
    N = len(completions)
    sequences = torch.full((N, P + C), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((N, P), dtype=torch.long)
    sampler_logp = torch.zeros((N, C), dtype=torch.float32)
    for i, c in enumerate(completions):
        prompt = prompts[i // group]
        sequences[i, P - len(prompt) : P] = torch.tensor(prompt)
        prompt_mask[i, P - len(prompt) :] = 1
        sequences[i, P : P + len(c.token_ids)] = torch.tensor(c.token_ids, dtype=torch.long)
        sampler_logp[i, : len(c.logp)] = torch.tensor(c.logp)
    return sequences, prompt_mask, sampler_logp


class VLLMSampler:
    """A vLLM engine that samples with the policy's current weights."""

    def __init__(self, cfg, tok, workdir: Path, eos_ids: set[int]):
        check_available(cfg)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: weights pass by reference
        from vllm import LLM

        self.cfg, self.tok, self.workdir, self.eos_ids = cfg, tok, workdir, eos_ids
        self.lora = cfg.adapter == "lora"
        self.syncs = 0
        self.llm = LLM(
            model=str(base_folder(cfg, workdir)),
            dtype=cfg.model.dtype,
            seed=cfg.seed,
            gpu_memory_utilization=cfg.rollout.vllm_memory,
            enable_lora=self.lora,
            max_lora_rank=max(8, cfg.lora.r) if self.lora else 16,
            enable_prefix_caching=True,  # G samples of one prompt share its KV cache
            logprobs_mode="processed_logprobs",  # log-probs of the distribution sampled from (temperature)
        )

    def sync(self, policy):
        """Hand the policy's current weights to vLLM; returns what `sample` needs to use them."""
        self.syncs += 1
        if self.lora:
            from vllm.lora.request import LoRARequest

            folder = self.workdir / "vllm_adapter" / f"sync-{self.syncs}"
            policy.save_pretrained(folder)
            return LoRARequest(f"policy-{self.syncs}", self.syncs, str(folder))
        weights = [(name, p.detach()) for name, p in policy.named_parameters()]
        self.llm.collective_rpc(_load_weights, args=(weights,))
        self.llm.reset_prefix_cache()  # cached keys/values belong to the old weights
        return None

    def sample(self, prompts: list[list[int]], group: int, seed: int, policy) -> list[Sampled]:
        from vllm import SamplingParams, TokensPrompt

        lora_request = self.sync(policy)
        r = self.cfg.rollout
        params = SamplingParams(
            n=group,
            temperature=r.temperature,
            top_p=r.top_p,
            max_tokens=r.max_new_tokens,
            stop=r.stop or None,
            stop_token_ids=sorted(self.eos_ids),
            logprobs=0,  # the sampled token's own log-prob
            seed=seed,
        )
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts],
            params,
            lora_request=lora_request,
            use_tqdm=False,
        )
        out = []
        for request in outputs:
            for c in request.outputs:
                ids = list(c.token_ids)
                logp = [step[t].logprob for step, t in zip(c.logprobs, ids)]
                out.append(Sampled(ids, logp))
        return out


def _load_weights(worker, weights):
    """Runs inside vLLM's worker: load (name, tensor) pairs into its model (HF names are accepted)."""
    worker.model_runner.model.load_weights(weights=weights)


def check_available(cfg) -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise TunelabError("rollout.backend=vllm needs vLLM: pip install 'tunelab[vllm]' (GPU machines).")
    if not torch.cuda.is_available():
        raise TunelabError("rollout.backend=vllm needs a GPU; on CPU use rollout.backend=hf.")
    if cfg.adapter not in ("lora", "none"):
        raise TunelabError(
            f"rollout.backend=vllm serves LoRA adapters or full weights, not adapter={cfg.adapter}."
        )


def base_folder(cfg, workdir: Path) -> Path:
    """An HF folder of the base model that vLLM can load: the model's own, or a copy saved once."""
    from tunelab.models.load import embedded_dir, resolve

    ref = resolve(cfg.model.name)
    if ref.kind == "embedded":
        return embedded_dir(cfg.model.name)
    if ref.kind == "hf_dir":
        return Path(cfg.model.name)
    folder = workdir / "vllm_base"
    if not (folder / "config.json").is_file():
        from tunelab.models.load import load_model

        model, tok = load_model(cfg.model.name, seed=cfg.seed)
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    return folder
