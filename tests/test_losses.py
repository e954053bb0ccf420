"""Losses against hand-computed values on tiny tensors; adaptive loss weighting modes."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from avemo.training.losses.terms import (
    class_weights,
    cross_entropy,
    distillation,
    focal_loss,
    gate_regularisation,
    info_nce,
    kl_divergence,
    reconstruction_loss,
    total_loss,
)
from avemo.training.losses.total import LossWeights, compute_losses
from avemo.training.losses.weighting import LossWeighter

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-0.5, 1.5, 0.0], [1.0, 1.0, 1.0]])
TARGET = torch.tensor([0, 2, 1, 0])


def hand_ce(logits, target):
    """-log softmax(logits)[y] per sample, written out."""
    return torch.stack([torch.logsumexp(r, 0) - r[t] for r, t in zip(logits, target)])


def test_cross_entropy_by_hand_and_class_weights():
    per = hand_ce(LOGITS, TARGET)
    assert torch.allclose(cross_entropy(LOGITS, TARGET), per.mean(), atol=1e-6)
    w = torch.tensor([1.0, 2.0, 4.0])
    expected = (w[TARGET] * per).sum() / w[TARGET].sum()
    got = cross_entropy(LOGITS, TARGET, w)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, per.mean(), atol=1e-3)
    cw = class_weights([0, 0, 0, 1], 3)  # class 1 rare -> larger weight, absent class 2 -> 1 before norm
    assert cw[1] > cw[0] and torch.allclose(cw.mean(), torch.tensor(1.0))


def test_focal_gamma0_and_smoothing0_equal_ce():
    ce = cross_entropy(LOGITS, TARGET)
    assert torch.allclose(focal_loss(LOGITS, TARGET, gamma=0.0), ce, atol=1e-6)
    assert torch.allclose(cross_entropy(LOGITS, TARGET, label_smoothing=0.0), ce)
    w = torch.tensor([0.5, 1.0, 3.0])
    assert torch.allclose(focal_loss(LOGITS, TARGET, gamma=0.0, weight=w), cross_entropy(LOGITS, TARGET, w), atol=1e-6)


def test_label_smoothing_hand_formula():
    eps = 0.2
    logp = torch.log_softmax(LOGITS, -1)
    expected = ((1 - eps) * hand_ce(LOGITS, TARGET) + eps * (-logp).mean(-1)).mean()
    assert torch.allclose(cross_entropy(LOGITS, TARGET, label_smoothing=eps), expected, atol=1e-6)
    assert torch.allclose(focal_loss(LOGITS, TARGET, gamma=0.0, label_smoothing=eps), expected, atol=1e-6)


def test_focal_gamma2_two_classes_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # p = (0.25, 0.75), (0.5, 0.5)
    target = torch.tensor([1, 0])
    l1 = (1 - 0.75) ** 2 * -math.log(0.75)
    l2 = (1 - 0.5) ** 2 * -math.log(0.5)
    assert focal_loss(logits, target, gamma=2.0).item() == pytest.approx((l1 + l2) / 2, rel=1e-5)
    alpha = torch.tensor([0.25, 0.75])
    assert focal_loss(logits, target, gamma=2.0, alpha=alpha).item() == pytest.approx(
        (0.75 * l1 + 0.25 * l2) / 2, rel=1e-5
    )
    # focal + smoothing: q = (1 - eps) onehot + eps / C, l = -sum_c q_c (1 - p_c)^g log p_c
    eps = 0.1
    q = torch.tensor([[eps / 2, 1 - eps / 2], [1 - eps / 2, eps / 2]])
    p = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    expected = (-(q * (1 - p) ** 2 * p.log()).sum(1)).mean()
    assert focal_loss(logits, target, gamma=2.0, label_smoothing=eps).item() == pytest.approx(expected.item(), rel=1e-5)


def test_info_nce():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 16, generator=g)
    aligned = info_nce(z, z + 0.01 * torch.randn(8, 16, generator=g))
    shuffled = info_nce(z, z[torch.roll(torch.arange(8), 3)])
    assert aligned < shuffled
    const = torch.ones(5, 4)
    assert info_nce(const, const).item() == pytest.approx(math.log(5), rel=1e-5)


def test_reconstruction_smooth_l1_vs_mse():
    pred = torch.zeros(1)
    for d, sl1, mse in ((0.5, 0.125, 0.25), (2.0, 1.5, 4.0), (-2.0, 1.5, 4.0)):
        t = torch.tensor([d])
        assert reconstruction_loss(pred, t, smooth_l1=True).item() == pytest.approx(sl1)
        assert reconstruction_loss(pred, t).item() == pytest.approx(mse)


def test_gate_regularisation():
    assert gate_regularisation(torch.full((3, 1), 0.5)).item() == pytest.approx(0.0)
    assert gate_regularisation(torch.tensor([[0.1], [0.7]])).item() == pytest.approx((0.16 + 0.04) / 2)
    assert gate_regularisation(torch.tensor([[0.1, 0.9]])).item() == pytest.approx(0.16)  # modality_weights form
    assert gate_regularisation(torch.full((2, 1), 0.5), mode="entropy").item() == pytest.approx(0.0, abs=1e-6)
    h = -(0.2 * math.log(0.2) + 0.8 * math.log(0.8))
    assert gate_regularisation(torch.tensor([[0.2]]), mode="entropy").item() == pytest.approx(math.log(2) - h, rel=1e-5)


def test_kl_divergence():
    assert kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)).item() == 0.0
    mu, logvar = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    s1 = -0.5 * ((1 + 0 - 1 - 1) + (1 + math.log(2.0) - 0 - 2))
    s2 = -0.5 * ((1 + 0 - 0 - 1) + (1 + 0 - 4 - 1))
    assert kl_divergence(mu, logvar).item() == pytest.approx((s1 + s2) / 2, rel=1e-5)


def test_distillation():
    assert distillation(LOGITS, LOGITS.clone()).item() == pytest.approx(0.0, abs=1e-6)
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 2.0 * math.log(3.0)]])  # T=2 -> teacher p = (.25, .75)
    expected = 4.0 * (0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5))
    assert distillation(s, t, temperature=2.0).item() == pytest.approx(expected, rel=1e-5)


def fusion_outputs(b: int = 4, c: int = 3, seed: int = 0, grad: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(b, c, generator=g, requires_grad=grad) for k in ("logits", "audio_logits", "video_logits")
    } | {"modality_weights": torch.full((b, 2), 0.5)}


@pytest.mark.parametrize("weight", [None, torch.tensor([1.0, 2.0, 0.5])])
@pytest.mark.parametrize("aux", [0.3, None])  # the seeds' weight, and the default (1.0)
def test_compute_losses_equals_old_total_loss(weight, aux):
    out = fusion_outputs()
    lw = LossWeights() if aux is None else LossWeights(aux=aux)
    a = lw.aux
    assert a == (1.0 if aux is None else aux)
    old = F.cross_entropy(out["logits"], TARGET, weight=weight)  # the historical formula, written out
    old = old + a * F.cross_entropy(out["audio_logits"], TARGET, weight=weight)
    old = old + a * F.cross_entropy(out["video_logits"], TARGET, weight=weight)
    total, parts = compute_losses(out, TARGET, lw, weight)
    assert torch.equal(total, old)
    legacy, legacy_parts = total_loss(out, TARGET, weight, a)
    assert torch.equal(legacy, old)
    assert set(legacy_parts) == {"ce", "aux_audio", "aux_video", "total"}
    assert parts["total"] == legacy_parts["total"] and parts["w_ce"] == 1.0 and parts["w_aux_audio"] == a


def test_compute_losses_parts_names():
    g = torch.Generator().manual_seed(1)
    out = fusion_outputs() | {
        "z_audio": torch.randn(4, 8, generator=g),
        "z_video": torch.randn(4, 8, generator=g),
        "recon_audio": torch.zeros(4, 5),
        "target_audio": torch.ones(4, 5),
        "recon_video": torch.zeros(4, 5),
        "recon_target_video": torch.full((4, 5), 2.0),
        "gate": torch.full((4, 1), 0.1),
        "mu_audio": torch.ones(4, 2),
        "logvar_audio": torch.zeros(4, 2),
        "mu_video": torch.zeros(4, 2),
        "logvar_video": torch.zeros(4, 2),
    }
    teacher = {"audio": torch.randn(4, 3, generator=g), "video": torch.randn(4, 3, generator=g)}
    w = LossWeights(kl=0.5, distill=0.2, recon_modality_weights=(1.0, 0.5))
    total, parts = compute_losses(out, TARGET, w, None, teacher, dynamic={"contrastive": 2.0})
    names = ("ce", "aux_audio", "aux_video", "contrastive", "recon", "gate_reg", "kl", "distill")
    for n in names:
        assert n in parts and f"w_{n}" in parts
    assert parts["recon"] == pytest.approx(1.0 + 0.5 * 4.0) and parts["kl"] == pytest.approx(1.0)
    assert parts["gate_reg"] == pytest.approx(0.16) and parts["w_contrastive"] == pytest.approx(0.2)
    assert total.item() == pytest.approx(sum(parts[n] * parts[f"w_{n}"] for n in names), rel=1e-5)
    assert parts["total"] == pytest.approx(total.item())


def test_loss_weights_dict_round_trip():
    w = LossWeights(focal_alpha=(1.0, 2.0), recon_modality_weights=(1.0, 0.5), kl=0.2)
    stored = {k: list(v) if isinstance(v, tuple) else v for k, v in w.to_dict().items()}  # as in a JSON config
    assert LossWeights.from_dict(stored) == w
    assert LossWeights.from_dict({}) == LossWeights()


def test_losses_package_has_no_cli_or_trainer_imports():
    """losses/ sits below train/ and the CLI: no argparse, no avemo.training.train, no avemo.contract.options."""
    root = Path(__file__).resolve().parents[1] / "training" / "losses"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name != "argparse" and not name.startswith(("avemo.training.train", "avemo.contract.options")), (
                    path.name,
                    name,
                )


# ---------------------------------------------------------------- weighting
def test_fixed_all_ones():
    parts = {"a": torch.tensor(3.0), "b": torch.tensor(0.1)}
    assert LossWeighter("fixed").weights(parts) == {"a": 1.0, "b": 1.0}


def test_inverse_ema_larger_loss_smaller_weight():
    lw = LossWeighter("inverse_ema", momentum=0.9)
    for _ in range(3):
        w = lw.weights({"big": torch.tensor(4.0), "small": torch.tensor(1.0)})
    assert w["big"] < w["small"]
    assert w["big"] == pytest.approx(0.4) and w["small"] == pytest.approx(1.6)  # 1/4 : 1, mean 1
    w = lw.weights({"big": torch.tensor(14.0), "small": torch.tensor(1.0)})  # EMA: 0.9*4 + 0.1*14 = 5
    assert w["big"] / w["small"] == pytest.approx(1 / 5)


def test_log_norm_gradient_is_that_of_log1p():
    x = torch.tensor(1.5, requires_grad=True)
    loss = x**2
    m = LossWeighter("log_norm").weights({"a": loss})["a"]
    (g,) = torch.autograd.grad(m * loss, x)
    x2 = x.detach().clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(torch.log1p(x2**2), x2)
    assert g.item() == pytest.approx(g_ref.item(), rel=1e-6)


def test_grad_balance_and_recompute_period():
    p = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    lw = LossWeighter("grad_balance", every=3)
    scale = {"steep": 10.0, "flat": 1.0}
    parts = lambda: {k: s * (p**2).sum() for k, s in scale.items()}  # noqa: E731
    w0 = lw.weights(parts(), [p], step=0)
    assert w0["steep"] < w0["flat"] and (w0["steep"] + w0["flat"]) / 2 == pytest.approx(1.0)
    assert w0["steep"] / w0["flat"] == pytest.approx(0.1)
    scale["steep"], scale["flat"] = 1.0, 10.0  # gradients swap; the weights must not until step 3
    assert lw.weights(parts(), [p], step=1) == w0 and lw.weights(parts(), [p], step=2) == w0
    w3 = lw.weights(parts(), [p], step=3)
    assert w3["steep"] > w3["flat"]


def test_state_dict_round_trip():
    a = LossWeighter("inverse_ema", momentum=0.8)
    for v in (1.0, 3.0, 2.0):
        a.weights({"x": torch.tensor(v), "y": torch.tensor(2 * v)})
    b = LossWeighter("fixed")
    b.load_state_dict(a.state_dict())
    nxt = {"x": torch.tensor(5.0), "y": torch.tensor(1.0)}
    assert b.state_dict() == a.state_dict() and a.weights(nxt) == b.weights(nxt)
    g = LossWeighter("grad_balance", every=10)
    p = torch.nn.Parameter(torch.ones(2))
    g.weights({"x": (p**2).sum(), "y": p.sum()}, [p], step=0)
    h = LossWeighter("grad_balance")
    h.load_state_dict(g.state_dict())
    later = {"x": (3 * p).sum(), "y": p.sum()}
    assert h.weights(later, [p], step=5) == g.weights(later, [p], step=5)


def test_aux_losses_learn_only_from_windows_that_have_their_modality():
    """A window whose video was dropped (modality dropout) does not train the video head; --no-aux_masked does."""
    out = fusion_outputs() | {"modality_present": torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])}
    _, parts = compute_losses(out, TARGET, LossWeights())
    video_rows, audio_rows = [0, 2], [0, 1, 3]
    assert parts["aux_video"] == pytest.approx(
        F.cross_entropy(out["video_logits"][video_rows], TARGET[video_rows]).item()
    )
    assert parts["aux_audio"] == pytest.approx(
        F.cross_entropy(out["audio_logits"][audio_rows], TARGET[audio_rows]).item()
    )
    _, every = compute_losses(out, TARGET, LossWeights(aux_masked=False))
    assert every["aux_video"] == pytest.approx(F.cross_entropy(out["video_logits"], TARGET).item())
    # no window with video at all: no video term (rather than a NaN mean over nothing)
    out["modality_present"] = torch.tensor([[1.0, 0.0]] * 4)
    total, parts = compute_losses(out, TARGET, LossWeights())
    assert "aux_video" not in parts and torch.isfinite(total)


def test_only_training_reports_the_windows_modalities(geo, tiny_dims):
    from avemo.training.models.config import ModelConfig
    from avemo.training.models.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(fusion="gated", modality_dropout=0.5, **tiny_dims), geo)
    frames = torch.zeros(8, geo.frames_per_window, geo.face_size, geo.face_size, 3, dtype=torch.uint8)
    mask = torch.ones(8, 2)
    present = model.train()(torch.zeros(8, geo.window_samples), frames, mask)["modality_present"]
    assert present.shape == (8, 2) and (present.sum(1) >= 1).all() and (present == 0).any()  # dropout happened
    assert "modality_present" not in model.eval()(torch.zeros(8, geo.window_samples), frames, mask)


def test_runs_stored_before_aux_masked_compare_as_unmasked():
    from avemo.training.train.compare import comparable
    from avemo.training.train.config import TrainConfig

    old = TrainConfig(losses=LossWeights(aux_masked=False).to_dict()).to_dict()
    del old["losses"]["aux_masked"]
    assert comparable(old) == comparable(TrainConfig(losses=LossWeights(aux_masked=False).to_dict()).to_dict())
    assert comparable(old) != comparable(TrainConfig(losses=LossWeights().to_dict()).to_dict())
