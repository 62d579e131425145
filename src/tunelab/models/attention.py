"""Attention on a packed layout that computes only what its mask allows: each continuation with its prompt.

    out = model(**inputs, **segment_kwargs(model, batch))   # batch: a packed data/layout.Layout

A packed row holds segments (a prompt and its continuations), and its 4-D mask lets each token see its
own prompt and its own continuation only. SDPA given that mask still computes every query against every
key of the row, and its cost grows with the row: rows are then kept short, and short rows of ragged
segments are padding in every linear layer (a reward-model batch of 8 pairs: 8 rows of 410 positions
for 2,520 tokens). Here every continuation is a *view*: its keys are its prompt's positions followed by
its own, gathered from the rows into a short sequence. A segment's first view asks for all of them as
queries (causal attention, no mask: the prompt's outputs are read from it); every later view asks for
its own tokens only, each seeing the whole prompt and its own tokens so far (`view_mask`), so a prompt
shared by G continuations is attended from once, not G times. Views of similar size go into one SDPA
call, and each position's output is read back from the one query slot that holds it. A token sees
exactly the keys its mask allows, at the same positions, so the result is the masked attention's up
to float rounding (tests/test_layout.py). Rows can then be long: the linear layers run once per token
with little padding, and a shared prompt is projected once. The layout takes views only where the
long rows save positions (data/layout.py `lay_out`): on a CPU, many short views cost more than the
masked rows of an RL group. Measured on SmolLM2 + LoRA in bf16, the reward-model benchmark went from
0.908 to 1.11 pairs/s with views, and a step took 7% less again once later views stopped repeating
their prompt's queries (docs/decisions.md, "Reward-model and GRPO speed").

The views travel as a forward keyword (transformers passes unknown keywords down to the attention
function); the function registered here as "sdpa" runs them when they are there and is transformers'
own SDPA otherwise, so every other forward (generation, padded batches) is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tunelab.data.layout import ViewBucket
from tunelab.models import matmul_attention
from tunelab.models.capability import attends_per_view

KEYWORD = "segment_views"  # the forward keyword the views travel under


@dataclass
class SegmentViews:
    buckets: list[ViewBucket]  # views of similar size (data/layout.py): keys, queries, skipped keys
    home: Tensor  # (R * T,) the query slot, in the buckets' laid end to end, holding each position's output

    @staticmethod
    def gather(x: Tensor, index: Tensor) -> Tensor:
        """(R, h, T, D) heads per row -> (V, h, L, D) heads at the flat positions `index` (V, L)."""
        R, h, T, D = x.shape
        flat = x.transpose(1, 2).reshape(R * T, h, D)
        V, L = index.shape
        return flat.index_select(0, index.flatten()).view(V, L, h, D).transpose(1, 2)

    def scatter(self, outs: list[Tensor], R: int, T: int) -> Tensor:
        """Per bucket (V_b, Lq_b, H, D) attention outputs -> (R, T, H, D) per row."""
        H, D = outs[0].shape[-2:]
        flat = torch.cat([o.reshape(-1, H, D) for o in outs])  # (sum V_b Lq_b, H, D)
        return flat.index_select(0, self.home).view(R, T, H, D)


def view_mask(bucket: ViewBucket) -> Tensor | None:
    """(V, 1, Lq, Lk) query i of a view sees its keys 0 .. skip + i (its prompt, its own tokens so far);
    None when every view asks for all its keys: plain causal attention."""
    Lq, Lk = bucket.queries.shape[1], bucket.keys.shape[1]
    if Lq == Lk and not bool(bucket.skip.any()):
        return None
    seen = bucket.skip[:, None, None] + torch.arange(Lq, device=bucket.skip.device)[None, :, None]
    return (torch.arange(Lk, device=seen.device)[None, None, :] <= seen)[:, None]


def one_query_gqa(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float | None
) -> Tensor:
    """Attention of one new token per row (decoding) when query heads share key/value heads (GQA): the
    G query heads of a key/value head run as G queries of that head, (B, H, 1, D) -> (B, Hkv, G, D), so
    nothing is repeated and no GQA kernel is needed. On a CPU, SmolLM2's 9 query / 3 key-value heads:
    108 µs a layer instead of SDPA's enable_gqa path at 409 (12 rows, 70 cached keys). The mask is per
    key, (B, 1, 1, L) or None, the same for every head. Returns (B, 1, H, D), as transformers' attention."""
    B, H, _, D = query.shape
    Hkv = key.shape[1]
    packed = query.reshape(B, Hkv, H // Hkv, D)  # query head h = kv head h // G, member h % G (repeat_kv)
    out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, attn_mask=mask, scale=scale)
    return out.reshape(B, H, 1, D).transpose(1, 2)


def _decoding_gqa(query: Tensor, key: Tensor, attention_mask, kwargs: dict) -> bool:
    """Whether `one_query_gqa` applies: one query per row, fewer key/value heads than query heads, a CPU
    (CUDA kernels take GQA as it is), a mask shared by the heads and nothing else in the scores."""
    shared_mask = attention_mask is None or (attention_mask.dim() == 4 and attention_mask.shape[1] == 1)
    plain = matmul_attention.plain_scores(kwargs)
    gqa = query.shape[1] > key.shape[1] and query.shape[1] % key.shape[1] == 0
    return query.shape[2] == 1 and gqa and query.device.type == "cpu" and shared_mask and plain


def segment_attention(module, query, key, value, attention_mask, segment_views=None, **kwargs):
    """transformers' SDPA attention; per view when a packed batch brought its views (the mask is then
    not needed: each view is causal), and `one_query_gqa` for a decoding step on a CPU."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if segment_views is None:
        if _decoding_gqa(query, key, attention_mask, kwargs):
            return one_query_gqa(query, key, value, attention_mask, kwargs.get("scaling")), None
        if _masked_rows(attention_mask, query, key) and matmul_attention.applies(query, key, kwargs):
            return matmul_attention.attend(query, key, value, attention_mask, kwargs.get("scaling")), None
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    R, _, T, _ = query.shape
    kwargs.pop("is_causal", None)
    outs = []
    for bucket in segment_views.buckets:
        q = segment_views.gather(query, bucket.queries)  # (V_b, H, Lq_b, D)
        k, v = (segment_views.gather(x, bucket.keys) for x in (key, value))  # (V_b, Hkv, Lk_b, D)
        mask = view_mask(bucket)
        if matmul_attention.applies(q, k, kwargs):
            out = matmul_attention.attend(q, k, v, mask, kwargs.get("scaling"))
        else:
            out, _ = sdpa_attention_forward(module, q, k, v, mask, is_causal=mask is None, **kwargs)
        outs.append(out)  # (V_b, Lq_b, H, D)
    return segment_views.scatter(outs, R, T), None


def _masked_rows(attention_mask, query: Tensor, key: Tensor) -> bool:
    """A packed (or padded) batch's boolean (B or 1, 1, Lq, Lk) mask, as `matmul_attention` takes it (one
    of another shape goes to SDPA, which says what is wrong with it)."""
    return (
        isinstance(attention_mask, Tensor)
        and attention_mask.dtype == torch.bool
        and attention_mask.dim() == 4
        and attention_mask.shape[0] in (1, query.shape[0])
        and attention_mask.shape[1] == 1
        and attention_mask.shape[2] == query.shape[2]
        and attention_mask.shape[3] == key.shape[2]
    )


_installed = False


def install() -> None:
    """Register `segment_attention` as transformers' "sdpa" (once per process; without views it is SDPA)."""
    global _installed
    if not _installed:
        from transformers import AttentionInterface

        AttentionInterface.register("sdpa", segment_attention)
        _installed = True


def segment_kwargs(model, batch) -> dict:
    """The forward keyword that makes a packed batch's attention run per view; nothing for a padded batch
    or a model that takes the mask instead."""
    if getattr(batch, "views", None) is None or not attends_per_view(model):
        return {}
    install()
    return {KEYWORD: SegmentViews(batch.views, batch.home)}


def attention_inputs(model, batch) -> dict:
    """`attention_mask` (and the views) for a forward of `batch` (data/layout.Layout) on `model`.

    A packed batch's 4-D mask is boolean (True: the query may see the key), which SDPA takes as it is;
    eager attention adds its mask to the scores, so it gets 0 where allowed and the most negative float
    elsewhere (given the booleans, it added 1 and 0: every packed token saw every other)."""
    mask = batch.attention_mask
    if batch.packed and mask.dtype == torch.bool and not attends_per_view(model):
        mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
    return {"attention_mask": mask, **segment_kwargs(model, batch)}
