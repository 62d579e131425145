"""`tunelab export`: a trained model out to the tools people run it in.

    tunelab export runs/sft --to merged --out served/             # HF folder: transformers, vLLM, TGI
    tunelab export runs/sft --to gguf --quant q8_0 --out sft.gguf  # llama.cpp, Ollama (Modelfile beside it), LM Studio

RUN_OR_MODEL is a run folder (its final/ is exported), an adapter folder, an HF folder, a .gguf file or
a model name. LoRA / DoRA adapters are merged into the weights first. A reward model goes out as an
HF folder only: GGUF has no scalar head, so `--to gguf` refuses it unless `--base` asks for the model it
was trained from.

GGUF is written with the `gguf` package's writer in llama.cpp's conventions (tensor names `token_embd`,
`blk.N.attn_q`, ..., `output_norm`; no `output` tensor when the embeddings are tied; Q and K rows
reordered for llama.cpp's rotary layout), with the tokenizer (byte-level BPE tokens, merges, token
types, special ids) and the chat template, so the file is self-contained. transformers reads it back
with `from_pretrained(folder, gguf_file=...)`, which undoes the reordering.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError

TARGETS = ("merged", "gguf")


@dataclass(frozen=True)
class GgufArch:
    name: str  # gguf.MODEL_ARCH member and the metadata key prefix
    rope_reorder: bool  # llama.cpp's llama pairs rotary dims differently from HF's halves


GGUF_ARCHS = {"llama": GgufArch("LLAMA", rope_reorder=True), "qwen2": GgufArch("QWEN2", rope_reorder=False)}
QUANTS = ("f16", "q8_0", "f32")


# ---------------------------------------------------------------- what is exported


def source_of(ref: str) -> str:
    """A run folder means its final/; anything else is a model reference."""
    path = Path(ref)
    if path.is_dir() and (path / "final").is_dir() and not (path / "config.json").is_file():
        return str(path / "final")
    return ref


def _meta(folder: Path) -> dict:
    meta = folder / "tunelab.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


def is_reward_model(source: str) -> bool:
    folder = Path(source)
    if (folder / "adapter_config.json").is_file():
        return json.loads((folder / "adapter_config.json").read_text()).get("task_type") == "SEQ_CLS"
    if (folder / "config.json").is_file():
        archs = json.loads((folder / "config.json").read_text()).get("architectures") or []
        return any(a.endswith("ForSequenceClassification") for a in archs)
    return False


def base_of(source: str) -> str:
    """The language model a run started from: the adapter's recorded base, else tunelab.json's model."""
    folder = Path(source)
    if (folder / "adapter_config.json").is_file():
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if base and is_reward_model(base):  # a 1-label sibling (models/portable.py): its files link to the LM
            linked = [p for p in Path(base).iterdir() if p.is_symlink()]
            return str(linked[0].resolve().parent) if linked else base
        if base:
            return base
    base = _meta(folder).get("model")
    if not base:
        raise TunelabError(
            f"'{source}' does not say which model it was trained from, so --base cannot find it."
        )
    return base


def load_merged(source: str):
    """(model, tokenizer) with any LoRA / DoRA adapter merged into the weights."""
    from tunelab.models.load import load_model

    model, tok = load_model(source, head="reward" if is_reward_model(source) else "lm")
    peft_type = getattr(getattr(model, "peft_config", {}).get("default"), "peft_type", None)
    if peft_type is not None:
        if peft_type.value != "LORA":
            raise TunelabError(
                f"'{source}' is a {peft_type.value.lower()} adapter: its virtual tokens are not weights an HF "
                "folder or a GGUF file can hold. Load the adapter folder with PEFT instead "
                "(AutoPeftModelForCausalLM.from_pretrained), or train with adapter=lora."
            )
        model = model.merge_and_unload()  # DoRA is peft's LORA type with use_dora, and merges the same way
    return model.eval(), tok


# ---------------------------------------------------------------- merged HF folder


def export_merged(source: str, out: Path) -> Path:
    """A self-contained HF folder: weights (adapter merged), config, tokenizer with its chat template."""
    model, tok = load_merged(source)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    meta = Path(source) / "tunelab.json"
    if meta.is_file():  # how prompts were rendered in training, for `tunelab generate` on the folder
        shutil.copy(meta, tmp / "tunelab.json")
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out


# ---------------------------------------------------------------- GGUF


def _rope_reorder(weight, n_heads: int):
    """HF keeps each head's rotary dims as two halves [x0..x(d/2-1) | y0..]; llama.cpp's llama wants
    them interleaved in pairs. Rows (n_heads * head_dim, in) -> the same rows in llama.cpp's order."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default")
    if kind != "default":
        raise TunelabError(f"GGUF export: rope scaling '{kind}' is not supported yet; use --to merged.")
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _write_model_metadata(writer, config, arch: str) -> None:
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_rope_dimension_count(_head_dim(config))
    writer.add_vocab_size(config.vocab_size)


def _merges(tok) -> list[str]:
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise TunelabError(
            f"GGUF export handles byte-level BPE tokenizers (GPT-2 / Llama-3 / SmolLM style); this one is "
            f"{model.get('type')}. Use --to merged."
        )
    return [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]


def _pre_tokenizer(tok) -> str:
    """llama.cpp's name for how text is split before BPE (tokenizer.ggml.pre)."""
    pre = json.dumps(json.loads(tok.backend_tokenizer.to_str()).get("pre_tokenizer"))
    vocab = tok.get_vocab()
    if '"individual_digits": true' in pre or (
        len(vocab) == 49152 and vocab.get("<|im_start|>") == 1 and vocab.get("<|im_end|>") == 2
    ):
        return "smollm"  # SmolLM / SmolLM2: digits one by one (the embedded model's own GGUF says so)
    if "\\p{N}{1,3}" in pre:
        return "llama-bpe"
    return "gpt2"


def _write_tokenizer(writer, tok, vocab_size: int) -> None:
    import gguf

    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = {i: a for i, a in tok.added_tokens_decoder.items()}
    special = set(tok.all_special_ids)
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows beyond the tokenizer (padded vocabularies)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        if i in special or (i in added and added[i].special):
            types.append(gguf.TokenType.CONTROL)
        elif i in added:
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(_pre_tokenizer(tok))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(tok))
    if tok.bos_token_id is not None:
        writer.add_bos_token_id(tok.bos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)
    if tok.unk_token_id is not None:
        writer.add_unk_token_id(tok.unk_token_id)
    writer.add_pad_token_id(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    adds_bos = tok.bos_token_id is not None and tok("a")["input_ids"][:1] == [tok.bos_token_id]
    writer.add_add_bos_token(adds_bos)
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)


def _gguf_tensors(model, arch: GgufArch, quant: str):
    """(gguf name, numpy data, raw dtype or None) for every weight, in llama.cpp's names and layout."""
    import gguf
    import numpy as np

    config = model.config
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.name), config.num_hidden_layers)
    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    qtype = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}.get(quant)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd when there is no `output` tensor
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise TunelabError(f"GGUF export: no llama.cpp name for the tensor '{hf_name}'.")
        data = tensor.detach().float().cpu().numpy()  # (out, in) for matrices
        if arch.rope_reorder and hf_name.endswith("q_proj.weight"):
            data = _rope_reorder(data, n_heads)
        elif arch.rope_reorder and hf_name.endswith("k_proj.weight"):
            data = _rope_reorder(data, n_kv)
        if data.ndim == 1 or qtype is None:  # norms and biases stay f32, as llama.cpp writes them
            yield name, data.astype(np.float32), None
        elif qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32 == 0:
            yield name, gguf.quants.quantize(data, qtype), qtype
        else:  # f16, or rows Q8_0's 32-value blocks do not divide
            yield name, data.astype(np.float16), None


def export_gguf(source: str, out: Path, quant: str = "f16", base: bool = False) -> Path:
    """A llama.cpp GGUF file at `out` (a .gguf path, or a folder that gets model.gguf) + an Ollama Modelfile."""
    import gguf

    if quant not in QUANTS:
        raise TunelabError(f"--quant {quant}: choose one of {', '.join(QUANTS)}.")
    if is_reward_model(source):
        if not base:
            raise TunelabError(
                f"'{source}' is a reward model: a scalar head on the model's body. GGUF (llama.cpp, Ollama) has "
                "no scalar head to run it with. Export it with --to merged (an HF folder, "
                "AutoModelForSequenceClassification), or pass --base to export the language model it was "
                f"trained from ({base_of(source)})."
            )
        source = base_of(source)
    model, tok = load_merged(source)
    arch = GGUF_ARCHS.get(model.config.model_type)
    if arch is None:
        raise TunelabError(
            f"GGUF export handles {', '.join(GGUF_ARCHS)} models; this one is {model.config.model_type}. "
            "Use --to merged, or llama.cpp's convert_hf_to_gguf.py on the merged folder."
        )
    path = out if out.suffix == ".gguf" else out / "model.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch.name.lower())
    writer.add_name(Path(source).name or "model")
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    writer.add_file_type(file_type.get(quant, gguf.LlamaFileType.ALL_F32))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _write_model_metadata(writer, model.config, arch.name.lower())
    _write_tokenizer(writer, tok, model.config.vocab_size)
    for name, data, raw_dtype in _gguf_tensors(model, arch, quant):
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    (path.parent / "Modelfile").write_text(modelfile(path.name, tok, _meta(Path(source))))
    return path


# ---------------------------------------------------------------- Ollama


def _default_system(tok) -> str | None:
    """The system message a ChatML template adds when none is given (SmolLM2 has one)."""
    text = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    head = "<|im_start|>system\n"
    if text.startswith(head) and "<|im_end|>" in text:
        return text[len(head) : text.index("<|im_end|>")]
    return None


def modelfile(gguf_name: str, tok, meta: dict) -> str:
    """An Ollama Modelfile: `ollama create NAME -f Modelfile`, then `ollama run NAME`."""
    render = meta.get("render", {})
    lines = [f"FROM ./{gguf_name}", ""]
    if tok.chat_template and "<|im_start|>" in tok.chat_template:  # ChatML, as in training
        lines += [
            'TEMPLATE """{{ if .System }}<|im_start|>system',
            "{{ .System }}<|im_end|>",
            "{{ end }}{{ if .Prompt }}<|im_start|>user",
            "{{ .Prompt }}<|im_end|>",
            "{{ end }}<|im_start|>assistant",
            '{{ .Response }}<|im_end|>"""',
        ]
        system = render.get("system") or _default_system(tok)
        if system:
            lines.append(f'SYSTEM """{system}"""')
        stops = ["<|im_end|>", "<|im_start|>"]
    else:  # a base model: the prompt, then the separator it was trained with
        separator = render.get("separator", "\n### Answer:\n")
        lines.append(f'TEMPLATE """{{{{ .Prompt }}}}{separator}{{{{ .Response }}}}"""')
        stops = [tok.eos_token]
    lines += [f'PARAMETER stop "{s}"' for s in stops] + ["PARAMETER temperature 0", ""]
    return "\n".join(lines)


def main(ref: str, to: str, out: str, quant: str = "f16", base: bool = False) -> Path:
    if to not in TARGETS:
        raise TunelabError(f"--to {to}: choose merged or gguf.")
    source = source_of(ref)
    if to == "merged":
        if base:
            source = base_of(source)
        return export_merged(source, Path(out))
    return export_gguf(source, Path(out), quant=quant, base=base)
