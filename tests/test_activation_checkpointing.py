"""train.activation_checkpointing: each decoder layer is recomputed in backward instead of keeping its
activations; the loss and the gradients are those of the plain run (full fine-tuning and LoRA)."""

import pytest
from conftest import write_jsonl
from test_train import PAIRS, metrics, sft_config

from tunelab.data.render import RenderOptions, render_pair
from tunelab.data.sources import rows_layout
from tunelab.stages import common, sft


@pytest.fixture
def pairs_file(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", PAIRS)


def _loss_and_grads(cfg):
    """One forward and backward of all PAIRS in training mode; also how often layer 0's MLP ran."""
    model, tok = common.prepare_model(cfg)
    model.train()
    rows = [render_pair(tok, r["prompt"], r["completion"], RenderOptions()) for r in PAIRS]
    batch = rows_layout(rows, tok.pad_token_id, packed=False)
    mlp = [m for m in model.modules() if type(m).__name__ == "LlamaMLP"][0]
    calls = []
    # a pre-hook: torch's checkpoint stops recomputing once it has what backward needs, before the
    # MLP returns, so a (post) forward hook sees one call either way
    mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    loss_sum, _ = sft.loss_fn(model, batch)
    (loss_sum / batch.n_targets).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss_sum.detach()), grads, len(calls)


@pytest.mark.parametrize("adapter", ["none", "lora"])
def test_checkpointed_loss_and_gradients_equal_the_plain_ones(tmp_path, pairs_file, adapter):
    plain = sft_config(tmp_path, pairs_file, f"adapter={adapter}")
    checkpointed = sft_config(
        tmp_path, pairs_file, f"adapter={adapter}", "train.activation_checkpointing=true"
    )
    loss, grads, forwards = _loss_and_grads(plain)
    ck_loss, ck_grads, ck_forwards = _loss_and_grads(checkpointed)
    assert (forwards, ck_forwards) == (1, 2)  # checkpointed: the layer ran again in backward
    assert ck_loss == pytest.approx(loss, abs=1e-5)
    assert grads.keys() == ck_grads.keys() and grads
    worst = max(float((grads[n] - ck_grads[n]).abs().max()) for n in grads)
    assert worst < 1e-5, worst
    # every trainable weight got a gradient through the recomputed layers (LoRA's A aside: B starts at
    # zero, so A's gradient is zero at step 0)
    assert all(float(g.abs().sum()) > 0 for n, g in ck_grads.items() if "lora_A" not in n)


def test_a_checkpointed_run_is_the_plain_run_and_says_so_in_config_yaml(tmp_path, pairs_file):
    args = ["adapter=lora", "train.max_steps=2"]
    plain = sft.main(sft_config(tmp_path, pairs_file, *args, f"out={tmp_path / 'plain'}"))
    on = ["train.activation_checkpointing=true", f"out={tmp_path / 'ckpt'}"]
    checkpointed = sft.main(sft_config(tmp_path, pairs_file, *args, *on))
    for a, b in zip(metrics(plain), metrics(checkpointed), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
    assert "activation_checkpointing: true" in (checkpointed / "config.yaml").read_text()
    assert "activation_checkpointing: false" in (plain / "config.yaml").read_text()
