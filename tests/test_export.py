"""Export and portability: every final/ loads with the plain HF/PEFT auto classes; `tunelab export`
writes a merged HF folder and a llama.cpp GGUF that transformers' GGUF loader reads back to the same model."""

import json
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl

from tunelab.config import load_config
from tunelab.config.schema import RMConfig, SFTConfig
from tunelab.errors import TunelabError
from tunelab.stages import rm, sft

PAIRS = [
    {"prompt": "cat", "completion": "chat"},
    {"prompt": "the dog", "completion": "le chien"},
    {"prompt": "a house by the sea", "completion": "une maison au bord de la mer"},
    {"prompt": "bread", "completion": "pain"},
]
PREFS = [
    {"prompt": "2+2=", "chosen": "4", "rejected": "5"},
    {"prompt": "the capital of France", "chosen": "Paris", "rejected": "London"},
    {"prompt": "cat in French", "chosen": "chat", "rejected": "dog"},
    {"prompt": "1+1=", "chosen": "2", "rejected": "3"},
]
PROMPTS = ["cat", "the capital of France?", "Translate to French: house", "what is two plus two?"]
LR = {"none": 3e-3, "lora": 5e-2, "dora": 5e-2, "prompt": 3e-1}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny run per kind of final/ (each adapter, full fine-tuning, reward models), 3 steps each."""
    root = tmp_path_factory.mktemp("runs")
    pairs = write_jsonl(root / "pairs.jsonl", PAIRS)
    prefs = write_jsonl(root / "prefs.jsonl", PREFS)
    common = ["model=tiny:llama", "train.max_steps=3", "train.batch_size=4", "train.warmup=0", "seed=3"]
    out = {}
    for adapter in ("lora", "dora", "prompt", "none"):
        cfg = load_config(
            SFTConfig,
            None,
            [
                *common,
                f"adapter={adapter}",
                f"data.train={pairs}",
                f"train.lr={LR[adapter]}",
                f"out={root / adapter}",
            ],
        )
        out[adapter] = sft.main(cfg) / "final"
    for adapter in ("lora", "none"):
        cfg = load_config(
            RMConfig,
            None,
            [*common, f"adapter={adapter}", f"data.train={prefs}", f"out={root / ('rm-' + adapter)}"],
        )
        out["rm-" + adapter] = rm.main(cfg) / "final"
    return out


def _logits(model, ids):
    with torch.no_grad():  # prompt tuning puts its virtual tokens' positions first: keep the text's
        return model(input_ids=ids).logits.float()[:, -ids.shape[1] :]


@pytest.mark.parametrize("kind", ["lora", "dora", "prompt", "none", "rm-lora", "rm-none"])
def test_every_final_loads_with_the_plain_auto_classes_offline(runs, kind):
    """The recorded base is a folder transformers resolves, and the logits are tunelab's own."""
    from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from tunelab.models.load import load_model

    final = runs[kind]
    reward = kind.startswith("rm")
    adapter = (final / "adapter_config.json").is_file()
    if adapter:
        base = json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
        assert Path(base).is_absolute() and (Path(base) / "config.json").is_file() and "seed3" in base
        auto = AutoPeftModelForSequenceClassification if reward else AutoPeftModelForCausalLM
    else:
        auto = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    plain = auto.from_pretrained(str(final), local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(final), local_files_only=True)
    ours, _ = load_model(str(final), head="reward" if reward else "lm")
    ids = tok("the dog and the cat", return_tensors="pt").input_ids
    assert torch.allclose(_logits(plain, ids), _logits(ours.eval(), ids), atol=1e-5)
    if adapter and not reward:  # the adapter moved the model: the base alone gives other logits
        base_model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
        assert not torch.allclose(_logits(base_model, ids), _logits(plain, ids), atol=1e-4)


def _greedy(model, tok, prompts=PROMPTS):
    from tunelab.generation import generate

    return generate(model, tok, prompts, max_new_tokens=12)


def test_gguf_f16_round_trip_gives_the_merged_models_answers(runs, tmp_path, cli):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.models.load import load_model

    code, _, err = cli(
        "export", str(runs["lora"].parent), "--to", "merged", "--out", str(tmp_path / "merged")
    )
    assert code == 0, err
    code, _, err = cli("export", str(runs["lora"].parent), "--to", "gguf", "--out", str(tmp_path / "gguf"))
    assert code == 0, err
    path = tmp_path / "gguf" / "model.gguf"

    # llama.cpp's conventions: names, tied embeddings (no output.weight), tokenizer, template
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    assert fields["general.architecture"] == "llama" and fields["llama.block_count"] == 2
    assert fields["llama.attention.head_count_kv"] == 2 and fields["llama.rope.dimension_count"] == 16
    assert "<|im_start|>" in fields["tokenizer.chat_template"]
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    names = {t.name for t in reader.tensors}
    assert {
        "token_embd.weight",
        "blk.1.attn_q.weight",
        "blk.0.ffn_gate.weight",
        "output_norm.weight",
    } <= names
    assert "output.weight" not in names
    assert all(t.tensor_type.name == ("F16" if len(t.shape) == 2 else "F32") for t in reader.tensors)

    merged, mtok = load_model(str(tmp_path / "merged"))
    back = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
    btok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    ids = mtok(PROMPTS[2], return_tensors="pt").input_ids
    assert btok(PROMPTS[2], return_tensors="pt").input_ids.tolist() == ids.tolist()
    assert torch.allclose(_logits(back, ids), _logits(merged, ids), atol=0.05)  # f16 rounding
    assert _greedy(back, btok) == _greedy(merged, mtok)
    # and through tunelab's own loader
    _, gen_gguf, _ = cli("generate", str(path), PROMPTS[0], "--max-new-tokens", "12")
    _, gen_merged, _ = cli("generate", str(tmp_path / "merged"), PROMPTS[0], "--max-new-tokens", "12")
    assert gen_gguf == gen_merged

    modelfile = (tmp_path / "gguf" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "<|im_start|>assistant" in modelfile and "SYSTEM" in modelfile


def test_gguf_q8_0_stays_close_and_is_quantised(runs, tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM

    from tunelab.export import main as export
    from tunelab.models.load import load_model

    path = export(str(runs["lora"]), "gguf", str(tmp_path / "q8.gguf"), quant="q8_0")
    assert path == tmp_path / "q8.gguf" and (tmp_path / "Modelfile").is_file()
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    merged, tok = load_model(str(runs["lora"]))
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name).eval()
    ids = tok(PROMPTS[1], return_tensors="pt").input_ids
    ours, theirs = _logits(merged.merge_and_unload(), ids), _logits(back, ids)
    assert (ours - theirs).abs().max() < 0.5  # 8-bit blocks: close, not equal
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() >= 0.8


def test_reward_model_is_refused_as_gguf_unless_its_base_is_asked_for(runs, tmp_path, cli):
    code, _, err = cli("export", str(runs["rm-lora"]), "--to", "gguf", "--out", str(tmp_path / "rm"))
    assert code == 2 and "reward model" in err and "no scalar head" in err and "--base" in err
    for kind in ("rm-none", "rm-lora"):  # the base: tunelab.json's model, or the adapter's recorded one
        code, _, err = cli("export", str(runs[kind]), "--to", "gguf", "--base", "--out", str(tmp_path / kind))
        assert code == 0, err
        assert (tmp_path / kind / "model.gguf").is_file()
    # as an HF folder it goes out whole, scalar head included
    code, _, err = cli("export", str(runs["rm-lora"]), "--to", "merged", "--out", str(tmp_path / "rm-merged"))
    assert code == 0, err
    config = json.loads((tmp_path / "rm-merged" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]


def test_prompt_adapter_cannot_merge_and_says_so(runs, tmp_path):
    from tunelab.export import main as export

    with pytest.raises(TunelabError, match="virtual tokens"):
        export(str(runs["prompt"]), "merged", str(tmp_path / "m"))
