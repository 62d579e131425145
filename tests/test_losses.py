import math

import pytest
import torch

from tunelab.config.schema import TrainSection
from tunelab.losses.lm import lm_loss_sum
from tunelab.train.optim import lr_at, param_groups


def test_lm_loss_sum_by_hand():
    # two positions over a 2-token vocabulary:
    #   logits (0, 0), target 0 -> -log(1/2) = log 2
    #   logits (log 3, 0), target 0 -> -log(3/4)
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    loss = lm_loss_sum(logits, torch.tensor([0, 0]))
    assert loss.item() == pytest.approx(math.log(2) - math.log(0.75))


def test_warmup_then_cosine_by_hand():
    cfg = TrainSection(lr=1.0, warmup=2, schedule="cosine")
    # warm-up steps 0, 1 -> 1/2, 2/2; then cosine over the 8 remaining steps: progress (s - 2) / 8
    assert [lr_at(s, 10, cfg) for s in (0, 1)] == [0.5, 1.0]
    assert lr_at(2, 10, cfg) == pytest.approx(1.0)
    assert lr_at(6, 10, cfg) == pytest.approx(0.5)  # progress 1/2 -> (1 + cos(pi/2)) / 2
    assert lr_at(10, 10, cfg) == pytest.approx(0.0)
    linear = TrainSection(lr=1.0, warmup=0.0, schedule="linear")
    assert lr_at(5, 10, linear) == pytest.approx(0.5)
    assert lr_at(7, 10, TrainSection(lr=0.3, warmup=0.0, schedule="constant")) == 0.3


def test_no_weight_decay_on_norms_and_biases():
    from tunelab.models.load import load_model

    model, _ = load_model("tiny:gpt2")  # has biases and layer norms
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any("ln_" in names[id(p)] for p in no_decay["params"]) and any(
        names[id(p)].endswith("bias") for p in no_decay["params"]
    )
