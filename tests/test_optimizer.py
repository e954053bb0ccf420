"""Which parameters AdamW decays (``TrainConfig.weight_decay_scope``)."""

from __future__ import annotations

import pytest

from avemo.training.models.config import ModelConfig
from avemo.training.models.model import build_model
from avemo.training.train.config import TrainConfig, check_config
from avemo.training.train.loop import make_optimizer


def _decay_of(opt) -> dict[int, float]:
    return {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}


def test_scope_all_decays_every_parameter(geo, tiny_dims):
    model = build_model(ModelConfig(fusion="gated", **tiny_dims), geo)
    opt = make_optimizer(model, TrainConfig(weight_decay=0.05))
    decay = _decay_of(opt)
    assert len(opt.param_groups) == 1
    assert len(decay) == len(list(model.parameters()))
    assert set(decay.values()) == {0.05}


def test_scope_matrices_spares_norms_biases_and_the_gate_bias(geo, tiny_dims):
    model = build_model(ModelConfig(fusion="gated", **tiny_dims), geo)
    opt = make_optimizer(model, TrainConfig(weight_decay=0.05, weight_decay_scope="matrices"))
    decay = _decay_of(opt)
    assert len(decay) == len(list(model.parameters()))  # every parameter is optimised, once
    for name, p in model.named_parameters():
        assert decay[id(p)] == (0.05 if p.ndim >= 2 else 0.0), name
    assert decay[id(model.fusion.gate.bias)] == 0.0 and decay[id(model.fusion.gate.weight)] == 0.05
    assert decay[id(model.audio_norm.weight)] == 0.0


def test_unknown_scope_is_refused():
    with pytest.raises(ValueError, match="weight_decay_scope"):
        check_config(TrainConfig(weight_decay_scope="biases"))
