"""Evaluation generation, one side per process: 64 prompts, greedy, up to 64 new tokens, SmolLM2-135M.

    python -m bench.gen --side tunelab --precision auto   # tunelab.models.generation.complete: the whole batch
    python -m bench.gen --side hf_batched --precision bf16  # model.generate on the left-padded batch
    python -m bench.gen --side hf_single                  # model.generate one prompt at a time (fp32)

The figure is generated tokens per second (each answer counted up to and including its first EOS).
Greedy answers must be the same on every side at one precision: each reports a digest of its answers.
`--precision bf16` runs every side on the same weights cast to bf16 (what `from_pretrained(dtype=
torch.bfloat16)` gives an HF user); `auto` (tunelab only) is what tunelab.models.precision.resolve picks.
"""

from __future__ import annotations

import argparse
import hashlib
import time

from bench.data import eval_prompts
from bench.harness import Shape, emit, peer_attention, peer_model


def parse(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=["tunelab", "hf_batched", "hf_single"], required=True)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32")
    return ap.parse_args(argv)


def resolve(a) -> tuple[str, str]:
    """(precision the weights run in, why): auto asks tunelab, the others are taken as given."""
    if a.precision != "auto":
        return a.precision, "asked"
    if a.side != "tunelab":
        raise SystemExit("--precision auto is tunelab's setting; HF generate runs fp32 or bf16")
    from tunelab.models.precision import resolve as tunelab_resolve

    chosen = tunelab_resolve("auto")
    return str(chosen.name), str(chosen.why)


def main(argv=None) -> None:
    import torch

    from tunelab.data.render import RenderOptions, prompt_text
    from tunelab.models.generation import complete, eos_ids, left_padded
    from tunelab.models.load import load_model

    a = parse(argv)
    precision, why = resolve(a)
    # the HF sides run transformers as it comes (peer_model); tunelab its own loader and attention
    model, tok = load_model("smollm2-135m") if a.side == "tunelab" else peer_model()
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    elif precision != "fp32":
        raise SystemExit(f"generation runs fp32 or bf16 here, not {precision}")
    model.eval()
    texts = [prompt_text(tok, p, RenderOptions()) for p in eval_prompts(a.prompts)]
    ends = eos_ids(model, tok)
    greedy = dict(do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=tok.pad_token_id)

    def hf(batch: list[str], new: int) -> list[list[int]]:
        enc = left_padded(tok, batch)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=new, eos_token_id=tok.eos_token_id, **greedy)
        rows = out[:, enc["input_ids"].shape[1] :].tolist()
        return [row[: next((k + 1 for k, t in enumerate(row) if t in ends), len(row))] for row in rows]

    def run(batch: list[str], new: int) -> tuple[list[str], list[int]]:
        if a.side == "tunelab":
            done = complete(model, tok, batch, max_new_tokens=new, temperature=0.0)
            return [text for text, _, _ in done], [n for _, _, n in done]
        if a.side == "hf_batched":
            rows = hf(batch, new)
        else:
            rows = [r for text in batch for r in hf([text], new)]
        return [tok.decode(r, skip_special_tokens=True).strip() for r in rows], [len(r) for r in rows]

    run(texts[:2], 4)  # warm-up
    start = time.perf_counter()
    answers, n_new = run(texts, a.new)
    seconds = time.perf_counter() - start
    prompt_lens = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    flops = Shape.of(model).flops([p + n for p, n in zip(prompt_lens, n_new)], sum(n_new), "forward")
    emit(
        {
            "figure": sum(n_new) / seconds,
            "seconds": seconds,
            "new_tokens": sum(n_new),
            "flops_per_s": flops / seconds,
            "answers_digest": hashlib.sha1("\n".join(answers).encode()).hexdigest()[:12],
            "first_answers": answers[:2],
            "prompts": len(texts),
            "precision": precision,
            "precision_why": why,
            "attention": peer_attention(),
        }
    )


if __name__ == "__main__":
    main()
