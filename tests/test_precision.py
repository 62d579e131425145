"""Mixed precision (train.precision): bf16 computes like fp32 within bf16's rounding, learns like it,
keeps every trained number in fp32, and `auto` follows a measurement of this machine.

Tolerance for a first step, bf16 vs fp32 on the 2-layer tiny model: |loss difference| <= 2% of the
loss + 0.02, and the same for the gradient norm (bf16 keeps 8 bits of mantissa: ~0.4% per rounding;
the differences measured here were 0.1-1%). Kill-and-resume under bf16 is in tests/test_resume.py.
"""

import contextlib
import dataclasses
import json

import pytest
import torch
from conftest import write_jsonl
from safetensors.torch import load_file
from test_layout import CASES, _train_mode, loss_grads_values
from test_pinned import COMMON, STAGES

from tunelab.models import matmul_attention, precision


def first_rows(cli, tmp_path, stage, name, *extra, steps=1):
    rows, options = STAGES[stage]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / name
    argv = [*COMMON, f"train.max_steps={steps}", f"data.train={data}", f"out={out}", *options, *extra]
    code, _, err = cli(stage, *argv)
    assert code == 0, err[-2000:]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if '"grad_norm"' in x], out


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 0.02 * abs(b) + 0.02


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_bf16_first_step_matches_fp32(stage, tmp_path, cli, one_thread):
    (fp32,), _ = first_rows(cli, tmp_path, stage, "fp32", "train.precision=fp32")
    (bf16,), out = first_rows(cli, tmp_path, stage, "bf16", "train.precision=bf16")
    assert close(bf16["loss"], fp32["loss"]), (bf16["loss"], fp32["loss"])
    if stage != "rl":  # RL's gradient is over the completions it sampled, and a bf16 sampler draws others
        assert close(bf16["grad_norm"], fp32["grad_norm"]), (bf16["grad_norm"], fp32["grad_norm"])
    # bf16 did compute: the numbers are not fp32's to the last bit
    assert (bf16["loss"], bf16["grad_norm"]) != (fp32["loss"], fp32["grad_norm"])
    assert "precision: bf16\n" in (out / "config.yaml").read_text()
    if stage == "rl":  # the trainer's log-probs are the old ones; the bf16 sampler's are weighed and logged
        assert bf16["sampler_logp_mismatch"] > 0 and 0 < bf16["tis_weight"] <= 2.0
        assert "sampler_logp_mismatch" not in fp32


@pytest.mark.parametrize("stage", sorted(CASES))
def test_bf16_on_the_same_batch_gives_fp32s_loss_and_gradients(stage, monkeypatch, one_thread):
    """Every stage's packed batch (tests/test_layout.py; RL's completions fixed): the loss as close() says,
    and the gradient within 10% of fp32's (measured 3-4.5% on the tiny model, with CPU flash attention
    or the matrix products alike). bf16 attention runs as matrix products (models/matmul_attention.py)."""
    attended = []
    attend = matmul_attention.attend
    monkeypatch.setattr(matmul_attention, "attend", lambda *a: attended.append(1) or attend(*a))
    results = {}
    for name in ("fp32", "bf16"):
        model, loss_fn, batch, values_fn = _train_mode(CASES[stage](True))
        with precision.using(precision.Precision(name)), precision.compute():
            results[name] = loss_grads_values(model, loss_fn, batch, values_fn)
        assert bool(attended) == (name == "bf16")
    (loss, _, grads), (want_loss, _, want_grads) = results["bf16"], results["fp32"]
    assert close(float(loss), float(want_loss)), (float(loss), float(want_loss))
    assert (grads - want_grads).norm() <= 0.1 * want_grads.norm()


def test_bf16_learns_as_fp32_does(tmp_path, cli, one_thread):
    runs = {
        p: first_rows(cli, tmp_path, "sft", p, f"train.precision={p}", steps=12)[0] for p in ("fp32", "bf16")
    }
    for rows in runs.values():
        assert sum(r["loss"] for r in rows[-3:]) / 3 < 0.8 * rows[0]["loss"]
    end = {p: sum(r["loss"] for r in rows[-3:]) / 3 for p, rows in runs.items()}
    assert abs(end["bf16"] - end["fp32"]) <= 0.1 * end["fp32"], end


@pytest.mark.parametrize("adapter", ["none", "lora"])
def test_bf16_keeps_trained_weights_and_optimizer_state_in_fp32(adapter, tmp_path, cli, one_thread):
    extra = [f"adapter={adapter}", "train.precision=bf16", "train.save_every=1", "train.keep_optimizer=true"]
    _, out = first_rows(cli, tmp_path, "sft", "run", *extra, steps=2)
    checkpoint = out / "checkpoints" / "step-2"
    trained = load_file(checkpoint / "trainable.safetensors")
    assert trained and all(t.dtype == torch.float32 for t in trained.values())
    moments = torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]
    tensors = [t for s in moments.values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert tensors and all(t.dtype == torch.float32 for t in tensors)
    name = "model.safetensors" if adapter == "none" else "adapter_model.safetensors"
    assert all(t.dtype == torch.float32 for t in load_file(out / "final" / name).values())


@pytest.mark.parametrize(
    ("peaks", "picked"),
    [
        ({"fp32": 100.0, "bf16": 48.0}, "fp32"),
        ({"fp32": 100.0, "bf16": 120.0}, "fp32"),
        ({"fp32": 100.0, "bf16": 450.0}, "bf16"),
    ],
)
def test_auto_follows_the_measured_peaks(peaks, picked, monkeypatch):
    monkeypatch.delenv("TUNELAB_AUTO_PRECISION")
    got = precision.resolve("auto", "cpu", peaks=peaks)
    assert got.name == picked and got.requested == "auto"
    assert f"{peaks['bf16']:.0f} GFLOP/s vs fp32 {peaks['fp32']:.0f}" in got.why


def test_auto_measures_once_per_machine(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNELAB_AUTO_PRECISION")
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(precision, "measure_peaks", lambda: calls.append(1) or {"fp32": 200.0, "bf16": 50.0})
    assert precision.resolve("auto", "cpu").name == "fp32"
    assert precision.resolve("auto", "cpu").name == "fp32"
    assert len(calls) == 1
    cached = json.loads((tmp_path / "precision.json").read_text())
    assert [v["bf16"] for v in cached.values()] == [50.0]


@pytest.mark.parametrize(("bf16", "picked"), [(60.0, "fp32"), (400.0, "bf16")])
def test_an_auto_run_records_what_the_measurement_picked(
    bf16, picked, tmp_path, cli, monkeypatch, one_thread
):
    monkeypatch.delenv("TUNELAB_AUTO_PRECISION")
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "measure_peaks", lambda: {"fp32": 100.0, "bf16": bf16})
    _, out = first_rows(cli, tmp_path, "sft", "auto", "train.precision=auto")
    config = (out / "config.yaml").read_text()
    assert "  precision: auto\n" in config and f"\nprecision: {picked}\n" in config
    assert f"bf16 matmul {bf16:.0f} GFLOP/s vs fp32 100" in config
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == picked and summary["precision_requested"] == "auto"
    assert f"- precision: {picked} (train.precision=auto: bf16 matmul" in (out / "report.md").read_text()


def test_fp16_on_a_cpu_is_refused_with_a_message(tmp_path, cli):
    rows, options = STAGES["sft"]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    code, _, err = cli(
        "sft", *COMMON, f"data.train={data}", f"out={tmp_path / 'run'}", "train.precision=fp16"
    )
    assert code != 0 and "fp16 needs a CUDA device" in err and "Traceback" not in err


def test_forwards_compute_in_the_precision_in_use():
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with precision.using(precision.resolve("bf16", "cpu")), precision.compute():
        assert layer(x).dtype == torch.bfloat16
    with precision.using(precision.resolve("fp32", "cpu")), precision.compute():
        assert layer(x).dtype == torch.float32
    assert layer.weight.dtype == torch.float32  # autocast casts as it computes; the weight stays


def test_decoding_casts_frozen_weights_once_with_the_same_result(one_thread):
    from tunelab.models.adapters import AdapterSpec, attach_adapter
    from tunelab.models.generation import decode_dropping_finished, left_padded
    from tunelab.models.load import load_model

    model, tok = load_model("tiny:llama")
    model = attach_adapter(
        model, tok, AdapterSpec(kind="lora", r=4, alpha=8, dropout=0.0, targets="all-linear")
    )
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    enc = left_padded(tok, ["one two", "three four five six"])
    runs = []
    with precision.using(precision.resolve("bf16", "cpu")):
        for once in (False, True):
            cast = precision.weights_cast_once(model) if once else contextlib.nullcontext()
            with torch.no_grad(), precision.compute(), cast:
                torch.manual_seed(0)
                runs.append(
                    decode_dropping_finished(model, enc, 6, {10_000}, tok.pad_token_id, 1.0, repeats=2)
                )
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)  # tokens, log-probs, entropies: bitwise
    assert {name for name, p in model.named_parameters() if not p.requires_grad} == frozen


def _lora_with_a_real_update():
    """The tiny model with LoRA whose B is not zero: merged and unmerged weights then differ."""
    from tunelab.models.adapters import AdapterSpec, attach_adapter
    from tunelab.models.load import load_model

    model, tok = load_model("tiny:llama")
    model = attach_adapter(
        model, tok, AdapterSpec(kind="lora", r=4, alpha=8, dropout=0.0, targets="all-linear")
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return model.eval(), tok


def test_forwards_after_merged_decoding_see_the_weights_as_they_are_now(one_thread):
    """Sampling merges LoRA into the base weights in place; forwards later in the same autocast region
    (the trainer's log-probs, the adapter-off reference) must not run the merged weights' cached cast."""
    from tunelab.models.adapters import lora_merged

    model, _ = _lora_with_a_real_update()
    ids = torch.randint(3, 60, (2, 10))
    with precision.using(precision.resolve("bf16", "cpu")), torch.no_grad():
        with precision.compute():
            policy = model(input_ids=ids).logits
            with model.disable_adapter():
                base = model(input_ids=ids).logits
        assert not torch.allclose(policy, base, atol=1e-2)  # the update is visible
        with precision.compute(), precision.weights_cast_once(model):
            model(input_ids=ids)  # casts cached before the merge
            with lora_merged(model):
                merged = model(input_ids=ids).logits
            after = model(input_ids=ids).logits
            with model.disable_adapter():
                after_base = model(input_ids=ids).logits
    assert (merged - policy).abs().max() < 0.25 * (base - policy).abs().max()  # merged = W + BA, in bf16
    assert torch.equal(after, policy) and torch.equal(after_base, base)


def _packing_runs() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@pytest.mark.skipif(not _packing_runs(), reason="oneDNN has no bf16 kernel on this CPU")
def test_prepacked_decoding_gives_autocasts_products_and_leaves_the_model_as_it_was(one_thread):
    """Merged LoRA, then prepacked weights: logits within bf16 rounding of autocast's, the same greedy
    tokens, and every Linear back to its own forward afterwards (also inside a nested region)."""
    from tunelab.models.adapters import lora_merged
    from tunelab.models.generation import decode_dropping_finished, left_padded

    model, tok = _lora_with_a_real_update()
    # the Linears that run while the adapter is merged (its own A and B do not: see the next test)
    linears = [m for n, m in model.named_modules() if type(m) is torch.nn.Linear and ".lora_" not in n]
    ids = torch.randint(3, 60, (3, 9))
    enc = left_padded(tok, ["one two", "three four five six"])
    with precision.using(precision.resolve("bf16", "cpu")), torch.no_grad(), precision.compute():
        with lora_merged(model):
            plain = model(input_ids=ids).logits
            plain_tokens = decode_dropping_finished(model, enc, 6, {10_000}, tok.pad_token_id)[0]
            with precision.linears_prepacked(model):
                assert all("forward" in vars(m) for m in linears)
                with precision.linears_prepacked(model):  # nested: packs nothing more, undoes nothing
                    pass
                assert all("forward" in vars(m) for m in linears)
                packed = model(input_ids=ids).logits
                packed_tokens = decode_dropping_finished(model, enc, 6, {10_000}, tok.pad_token_id)[0]
    assert packed.dtype == plain.dtype
    assert (packed.float() - plain.float()).abs().max() <= 0.02 * plain.float().abs().max()
    assert torch.equal(packed_tokens, plain_tokens)
    assert not any("forward" in vars(m) for m in linears)


@pytest.mark.skipif(not _packing_runs(), reason="oneDNN has no bf16 kernel on this CPU")
def test_a_merged_loras_a_and_b_are_not_packed(one_thread):
    """A merged LoRA's A and B do not run while decoding: they are not reordered (the base layers are)."""
    from tunelab.models.adapters import lora_merged

    model, _ = _lora_with_a_real_update()
    lora = [m for name, m in model.named_modules() if type(m) is torch.nn.Linear and ".lora_" in name]
    base = [m for name, m in model.named_modules() if name.endswith("base_layer")]
    assert lora and base
    with precision.using(precision.resolve("bf16", "cpu")), torch.no_grad(), precision.compute():
        with lora_merged(model), precision.linears_prepacked(model):
            assert not any("forward" in vars(m) for m in lora)
            assert all("forward" in vars(m) for m in base)


@pytest.mark.skipif(not _packing_runs(), reason="oneDNN has no bf16 kernel on this CPU")
def test_merging_lora_under_packed_weights_is_refused(one_thread):
    """Packed first, merged after: the packed copies would decode without the adapter, silently."""
    from tunelab.models.adapters import lora_merged

    model, _ = _lora_with_a_real_update()
    with precision.using(precision.resolve("bf16", "cpu")), torch.no_grad():
        with precision.linears_prepacked(model), pytest.raises(RuntimeError, match="packed copies"):
            with lora_merged(model):
                pass


@pytest.mark.parametrize("case", ["fp32", "grad"])
def test_prepacking_is_left_out_where_it_would_change_the_result(case, one_thread):
    """fp32 computes in fp32 (a bf16 copy would round), and a packed weight has no backward."""
    model, _ = _lora_with_a_real_update()
    grad = torch.enable_grad() if case == "grad" else torch.no_grad()
    with precision.using(precision.resolve("fp32" if case == "fp32" else "bf16", "cpu")), grad:
        with precision.linears_prepacked(model):
            assert not any("forward" in vars(m) for m in model.modules())


def test_a_bf16_rollout_scores_the_reference_with_the_adapter_off(one_thread):
    """The rollout's reference log-probs under bf16 are the adapter-off model's, computed fresh."""
    from tunelab.config import load_config
    from tunelab.config.schema import RLConfig
    from tunelab.rl.rewards import build_reward
    from tunelab.rl.rollout import RolloutSource
    from tunelab.stages import rl

    model, tok = _lora_with_a_real_update()
    cfg = load_config(RLConfig, None, ["model=tiny:llama", "rl.group=3", "rollout.max_new_tokens=5"])
    rows = [{"prompt": "one two three", "answer": "4"}, {"prompt": "five six", "answer": "7"}]
    source = RolloutSource(model, tok, rows, build_reward("number"), cfg, ref=rl.reference(model, cfg))
    with precision.using(precision.resolve("bf16", "cpu")):
        batch = source.make_batch(rows, seed=0)
        with torch.no_grad(), precision.compute(), model.disable_adapter():
            expected = rl.layout_logprobs(model, batch.seqs, cfg.rollout.temperature)[0]
    assert torch.equal(batch.ref_logp, expected)
    assert batch.stats["kl"] > 1e-3  # the policy is not its own reference


@pytest.mark.parametrize("ppo_epochs", [1, 2])
def test_an_on_policy_bf16_rollout_leaves_the_old_log_probs_to_the_loss_forward(ppo_epochs, one_thread):
    """One update per rollout: the loss's forward is the trainer's forward at sampling time (the policy has
    not moved), so the rollout runs no forward of its own for them, and the loss is the one the recomputed
    log-probs give. Several updates per rollout: they are recomputed and kept."""
    from tunelab.config import load_config
    from tunelab.config.schema import RLConfig
    from tunelab.rl.rewards import build_reward
    from tunelab.rl.rollout import RolloutSource
    from tunelab.stages import rl

    model, tok = _lora_with_a_real_update()
    overrides = ["model=tiny:llama", "rl.group=3", "rollout.max_new_tokens=5", f"rl.ppo_epochs={ppo_epochs}"]
    cfg = load_config(RLConfig, None, overrides)
    rows = [{"prompt": "one two three", "answer": "4"}, {"prompt": "five six", "answer": "7"}]
    source = RolloutSource(model, tok, rows, build_reward("number"), cfg, ref=rl.reference(model, cfg))
    with precision.using(precision.resolve("bf16", "cpu")):
        batch = source.make_batch(rows, seed=0)
        assert (batch.old_logp is None) == (ppo_epochs == 1) and batch.sampler_logp is not None
        with torch.no_grad(), precision.compute():
            trainer = rl.layout_logprobs(model, batch.seqs, cfg.rollout.temperature)[0]
        losses = {}
        for old in ("as made", "recomputed"):
            b = batch if old == "as made" else dataclasses.replace(batch, old_logp=trainer)
            with precision.compute():
                loss, metrics = rl.make_loss_fn(cfg)(model, b)
            losses[old] = (float(loss), metrics["sampler_logp_mismatch"], metrics["tis_weight"])
    assert losses["as made"] == pytest.approx(losses["recomputed"], rel=1e-5, abs=1e-6)
    assert losses["as made"][1] > 0  # bf16 decoding and the trainer's forward differ in rounding


def test_checkpoints_keep_the_fp16_gradient_scaler(tmp_path):
    """fp16 resumes with the loss scale it had, not the initial one (fp16 trains on CUDA only; the
    scaler and the checkpoint do not need it)."""
    from tunelab.config.schema import GuardSection
    from tunelab.train.dist import SINGLE
    from tunelab.train.guard import Guard
    from tunelab.train.lifecycle import Checkpoints, LoopState

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    params = list(model.parameters())

    def checkpoints(scaler):
        return Checkpoints(tmp_path, model, optimizer, SINGLE, None, Guard(GuardSection()), 2, params, scaler)

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1)
    for _ in range(3):  # every finite step doubles the scale (growth_interval 1): 2^12 -> 2^15
        scaler.scale(model(torch.ones(1, 2)).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    checkpoints(scaler).save(LoopState(step=3))
    saved = json.loads((tmp_path / "checkpoints" / "step-3" / "state.json").read_text())
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1)
    checkpoints(fresh).restore_scaler(LoopState(**saved))
    assert fresh.get_scale() == scaler.get_scale() == 2.0**15
