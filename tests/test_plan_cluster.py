"""`tunelab plan` for several devices: the ZeRO paper's model states, parameter counts from a config
alone, the cheapest strategy that fits, and the JSON rows scripts read."""

import json

import pytest

# Llama-2-7B's config.json (the fields that size the model); nothing is downloaded
LLAMA_7B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}


@pytest.fixture
def llama_7b(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA_7B))
    return path


def test_parameters_are_counted_from_the_config_alone_like_transformers_on_the_meta_device(llama_7b):
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunelab.plan_cluster import load_config, meta_parameter_count

    config = load_config(str(llama_7b))
    with init_empty_weights():  # transformers' own count, nothing allocated
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(llama_7b.parent))
    theirs = sum(p.numel() for p in model.parameters())
    ours = meta_parameter_count(config)
    assert abs(ours - theirs) / theirs < 0.005
    assert ours == 6_738_415_616  # Llama-2-7B's published count


@pytest.mark.parametrize(
    "strategy, expected_gb",
    [("ddp", 120.0), ("zero1", 31.4), ("zero2", 16.6), ("zero3", 1.9)],  # the paper's Table 1
)
def test_model_states_reproduce_table_1_of_the_zero_paper(strategy, expected_gb):
    from tunelab.plan_cluster import model_states

    # 7.5B parameters, mixed-precision Adam, 64 devices: 16Ψ, 4Ψ + 12Ψ/64, 2Ψ + 14Ψ/64, 16Ψ/64 bytes
    states = model_states(7.5e9, 7.5e9, strategy, 64, "bf16")
    assert round(sum(states.values()) / 1e9, 1) == expected_gb


def test_a_7b_config_on_64_devices_follows_the_zero_formulas(cli, llama_7b):
    code, stdout, _ = cli(
        "plan", str(llama_7b), "--devices", "64", "--precision", "bf16", "--method", "full", "--json"
    )
    assert code == 0
    rows = {r["strategy"]: r for r in json.loads(stdout)}
    assert set(rows) == {"ddp", "zero1", "zero2", "zero3", "fsdp"}
    psi, n = rows["ddp"]["parameters"], 64
    formulas = {
        "ddp": 16 * psi,
        "zero1": 4 * psi + 12 * psi / n,
        "zero2": 2 * psi + 14 * psi / n,
        "zero3": 16 * psi / n,
        "fsdp": 16 * psi / n,
    }
    for strategy, row in rows.items():
        parts = row["memory_gb"]
        assert set(parts) >= {"parameters", "gradients", "optimizer", "activations", "logits"}
        states = (parts["parameters"] + parts["gradients"] + parts["optimizer"]) * 1e9
        assert states == pytest.approx(formulas[strategy], rel=0.05), strategy
        assert row["per_device_gb"] == pytest.approx(sum(parts.values()), abs=0.01)
    # mixed precision: 2Ψ bf16 weights under DDP, 12Ψ fp32 master + moments
    assert rows["ddp"]["memory_gb"]["parameters"] == pytest.approx(2 * psi / 1e9, rel=1e-3)
    assert rows["ddp"]["memory_gb"]["optimizer"] == pytest.approx(12 * psi / 1e9, rel=1e-3)


def test_fp32_is_16_bytes_a_parameter_too_but_split_4_4_8():
    from tunelab.plan_cluster import model_states

    states = model_states(1e9, 1e9, "ddp", 8, "fp32")
    assert states == {"parameters": 4e9, "gradients": 4e9, "optimizer": 8e9}


def test_lora_keeps_the_frozen_base_whole_unless_the_weights_are_sharded():
    from tunelab.plan_cluster import model_states

    # 1e9 frozen + 1e6 trainable, bf16, 4 devices
    ddp = model_states(1e9 + 1e6, 1e6, "ddp", 4, "bf16")
    assert ddp["parameters"] == pytest.approx(2 * 1e9 + 2 * 1e6)  # bf16 base + bf16 adapter copy
    assert ddp["optimizer"] == pytest.approx(12 * 1e6)
    zero3 = model_states(1e9 + 1e6, 1e6, "zero3", 4, "bf16")
    assert zero3["parameters"] == pytest.approx((2 * 1e9 + 2 * 1e6) / 4)


def test_activations_time_and_offload_by_hand(llama_7b):
    from tunelab.plan_cluster import load_config, plan_row

    config = load_config(str(llama_7b))
    row = plan_row(config, strategy="zero3", devices=8, batch_size=1, seq_len=1024, tflops=100, mfu=0.5)
    # per token and layer 7h + 2kv + 4i = 7*4096 + 2*4096 + 4*11008 = 80,896 bf16 elements
    assert row.memory_gb["activations"] == pytest.approx(32 * 1024 * 80_896 * 2 / 1e9, rel=1e-3)
    # checkpointing: each layer's input (h) + one layer's full set
    assert row.activations_checkpointed_gb == pytest.approx(
        (32 * 1024 * 4096 * 2 + 1024 * 80_896 * 2) / 1e9, rel=1e-3
    )
    assert row.memory_gb["logits"] == pytest.approx(
        1024 * 32000 * 10 / 1e9, rel=1e-3
    )  # bf16 + fp32 copy and grad
    flops = 1024 * (6 * row.parameters + 12 * 32 * 4096 * 1024)
    assert row.flops_per_step == pytest.approx(flops)
    assert row.seconds_per_step == pytest.approx(flops / (100e12 * 0.5))
    off = plan_row(config, strategy="zero3", devices=8, batch_size=1, seq_len=1024, offload="params")
    assert off.memory_gb["optimizer"] == off.memory_gb["parameters"] == 0
    assert off.host_gb == pytest.approx(row.memory_gb["optimizer"] + row.memory_gb["parameters"], abs=1e-3)


def test_the_cheapest_strategy_that_fits_is_marked(cli, llama_7b):
    # 7B full fine-tuning on 8 x 80 GB: DDP needs 16Ψ = 108 GB of model states alone; ZeRO-1 needs
    # 4Ψ + 12Ψ/8 = 37 GB + activations of 1 x 512 tokens (2.6 GB) + logits: it fits
    code, stdout, _ = cli(
        "plan",
        str(llama_7b),
        "--devices",
        "8",
        "--gpu",
        "H100",
        "--seq-len",
        "512",
        "--batch-size",
        "1",
        "--json",
    )
    rows = json.loads(stdout)
    full = [r for r in rows if r["method"] == "full"]
    assert not next(r for r in full if r["strategy"] == "ddp")["fits"]
    assert [r["strategy"] for r in full if r["cheapest"]] == ["zero1"]
    assert rows[0]["assumptions"]["mfu"] == 0.4 and "989" in rows[0]["assumptions"]["peaks"]["bf16"]
    # on 24 GB devices nothing but sharded weights fits
    code, stdout, _ = cli(
        "plan", str(llama_7b), "--devices", "8", "--gpu", "L4", "--seq-len", "512", "--batch-size", "1",
        "--method", "full", "--json",
    )  # fmt: skip
    pick = [r for r in json.loads(stdout) if r["cheapest"]]
    assert [r["strategy"] for r in pick] == ["fsdp"]


def test_the_table_names_the_pick_and_its_assumptions(cli, llama_7b):
    code, stdout, _ = cli(
        "plan", str(llama_7b), "--devices", "64", "--strategy", "ddp", "zero3", "--method", "full"
    )
    assert code == 0
    assert "cheapest that fits" in stdout and "MFU of 40%" in stdout and "6.74B parameters" in stdout


def test_the_one_machine_plan_reads_a_config_json_too(cli, tmp_path):
    from tunelab.models.tiny import tiny_model

    tiny_model("llama")[0].config.save_pretrained(tmp_path)
    code, stdout, _ = cli("plan", str(tmp_path / "config.json"), "--method", "full", "--steps", "3")
    assert code == 0 and "total MB" in stdout
