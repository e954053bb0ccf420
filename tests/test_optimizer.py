"""Which parameters AdamW decays (``TrainConfig.weight_decay_scope``)."""

from __future__ import annotations

import pytest
import torch

from avemo.training.models.config import ModelConfig
from avemo.training.models.model import build_model
from avemo.training.train.config import TrainConfig, check_config
from avemo.training.train.loop import make_optimizer, scaled_step, warmup_factor


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
    assert decay[id(model.norms["audio"].weight)] == 0.0


def test_unknown_scope_is_refused():
    with pytest.raises(ValueError, match="weight_decay_scope"):
        check_config(TrainConfig(weight_decay_scope="biases"))
    with pytest.raises(ValueError, match="warmup_epochs"):
        check_config(TrainConfig(warmup_epochs=-1))


def test_warmup_factor_is_linear_then_one():
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0  # off


def test_scaled_step_is_a_step_at_the_scaled_lr_and_restores_the_lr(geo, tiny_dims):
    """A warm-up step at factor 0.25 moves the weights exactly as AdamW at lr / 4 would; the LR the cosine
    schedule set is back afterwards (so the schedule and a resumed run never see the warm-up)."""
    torch.manual_seed(0)
    models = [build_model(ModelConfig(fusion="video", **tiny_dims), geo) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    for m in models:
        m.eval()  # no dropout: both get the same gradients
    opts = [make_optimizer(models[0], TrainConfig(lr=4e-3)), make_optimizer(models[1], TrainConfig(lr=1e-3))]
    frames = torch.randint(0, 256, (2, geo.frames_per_window, geo.face_size, geo.face_size, 3), dtype=torch.uint8)
    batch = (torch.zeros(2, geo.window_samples), frames, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    before = [p.detach().clone() for p in models[0].parameters()]
    for model, opt in zip(models, opts):
        opt.zero_grad()
        model(*batch)["logits"].square().sum().backward()
    scaled_step(opts[0], 0.25)
    opts[1].step()
    assert opts[0].param_groups[0]["lr"] == 4e-3
    assert any(not torch.equal(p, b) for p, b in zip(models[0].parameters(), before))  # the step did move them
    for (name, p0), p1 in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(p0, p1, rtol=0, atol=1e-7, msg=name)


def test_a_run_from_before_warmup_is_reused_only_without_warmup():
    """compare / demo reuse a finished run of the same configuration; one made before --warmup_epochs existed
    trained without warm-up."""
    from avemo.training.losses.total import LossWeights
    from avemo.training.train.compare import comparable

    unmasked = LossWeights(aux_masked=False).to_dict()  # the recipe's other option, off as in such stored runs
    old = TrainConfig(warmup_epochs=0, losses=unmasked).to_dict()
    del old["warmup_epochs"]
    assert comparable(old) == comparable(TrainConfig(warmup_epochs=0, losses=unmasked).to_dict())
    assert comparable(old) != comparable(TrainConfig(losses=unmasked).to_dict())
