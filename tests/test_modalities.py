"""The modality-generic core: every fusion over M = 2 and M = 3 feature modalities, the clip model as the
M = 2 case (old checkpoints load and answer as before), feature encoders that ignore padding, and the
losses over modality pairs and for regression. Tiny models throughout."""

from __future__ import annotations

import pytest
import torch

from avemo.training.losses.terms import (
    contrastive_loss,
    gate_regularisation,
    gaussian_distillation,
    info_nce,
    regression_loss,
)
from avemo.training.losses.total import LossWeights, loss_terms
from avemo.training.models.checkpoint import model_from_checkpoint, upgrade_state_dict
from avemo.training.models.config import FUSIONS, ModelConfig
from avemo.training.models.feature_encoders import build_feature_encoder
from avemo.training.models.model import build_model, model_inputs

TRI = ("text", "audio", "video")
DIMS = {"text": 12, "audio": 5, "video": 7}
LENS = {"text": 6, "audio": 10, "video": 8}
MULTI = [f for f in FUSIONS if f not in ("audio", "video", "text")]


def feature_cfg(fusion: str, modalities=TRI, task="classification", **kw) -> ModelConfig:
    return ModelConfig(
        fusion=fusion,
        num_classes=1 if task == "regression" else 3,
        modalities=modalities,
        task=task,
        input_dims={m: DIMS[m] for m in modalities},
        seq_lens={m: LENS[m] for m in modalities},
        embed_dim=16,
        modality_dropout=0.0,
        gate_init_audio=1.0 / len(modalities),
        **kw,
    )


def feature_batch(b: int = 4, modalities=TRI, seed: int = 0) -> dict[str, torch.Tensor]:
    """Zero-padded feature sequences with lengths, as ``FeatureDataset`` batches them."""
    g = torch.Generator().manual_seed(seed)
    batch = {}
    lengths = torch.stack([torch.randint(1, LENS[m] + 1, (b,), generator=g) for m in modalities], dim=1)  # [B, M]
    for i, m in enumerate(modalities):
        x = torch.randn(b, LENS[m], DIMS[m], generator=g)
        steps = torch.arange(LENS[m])[None, :, None]
        batch[m] = x * (steps < lengths[:, i, None, None])  # zero after each length
    batch["mask"], batch["lengths"] = torch.ones(b, len(modalities)), lengths
    return batch


# ---------------------------------------------------------------- old clip checkpoints
@pytest.fixture(scope="module")
def legacy(repo_root):
    """Checkpoints of the nine clip fusions written before the core was keyed by modality (tests/data), with
    their outputs on ``tiny_batch(4, seed=0)`` under the mask (both, audio only, video only, both)."""
    return torch.load(repo_root / "tests" / "data" / "legacy_clip_checkpoints.pt", weights_only=True)


@pytest.mark.parametrize("fusion", FUSIONS[:9])
def test_old_clip_checkpoints_load_and_answer_as_before(fusion, legacy, tiny_batch):
    rec = legacy["models"][fusion]
    assert any(k.startswith(("audio_encoder.", "video_encoder.")) for k in rec["checkpoint"]["state_dict"])  # old names
    model, _ = model_from_checkpoint(rec["checkpoint"])
    audio, frames, _ = tiny_batch(4, seed=0)
    with torch.no_grad():
        out = model(audio, frames, legacy["mask"])
    for key, want in rec["outputs"].items():
        torch.testing.assert_close(out[key], want, atol=1e-5, rtol=1e-5, msg=f"{fusion} {key}")


def test_upgrade_renames_every_old_key_and_keeps_new_ones(legacy):
    for rec in legacy["models"].values():
        new = upgrade_state_dict(rec["checkpoint"]["state_dict"])
        assert not [k for k in new if k.startswith(("audio_", "video_", "fusion.norm_a", "fusion.enc_audio"))]
        assert list(new.values())[0] is list(rec["checkpoint"]["state_dict"].values())[0]  # same tensors, same order
        assert upgrade_state_dict(new) is new


# ---------------------------------------------------------------- every fusion over M modalities
@pytest.mark.parametrize("modalities", [TRI, ("text", "audio")], ids=["atv", "at"])
@pytest.mark.parametrize("fusion", MULTI)
def test_every_fusion_runs_over_feature_modalities(fusion, modalities):
    torch.manual_seed(0)
    model = build_model(feature_cfg(fusion, modalities, contrastive_proj_dim=8), None).eval()
    batch = feature_batch(4, modalities)
    out = model(*model_inputs(model, batch))
    m = len(modalities)
    assert out["logits"].shape == (4, 3) and out["modality_weights"].shape == (4, m)
    torch.testing.assert_close(out["modality_weights"].sum(1), torch.ones(4))
    assert {f"{n}_logits" for n in modalities} | {f"z_{n}" for n in modalities} <= set(out)
    # a missing modality: weight exactly 0, and its content cannot change the answer
    mask = torch.ones(4, m)
    mask[:, 1] = 0.0
    other = dict(batch, mask=mask)
    other[modalities[1]] = torch.randn_like(batch[modalities[1]]) * 5
    a, b = model(*model_inputs(model, dict(batch, mask=mask))), model(*model_inputs(model, other))
    assert torch.all(a["modality_weights"][:, 1] == 0)
    torch.testing.assert_close(a["logits"], b["logits"])


@pytest.mark.parametrize("fusion", MULTI)
def test_every_fusion_trains_every_parameter_over_three_modalities(fusion):
    torch.manual_seed(0)
    model = build_model(feature_cfg(fusion, task="regression", contrastive_proj_dim=8), None).train()
    out = model(*model_inputs(model, feature_batch(6)))
    assert out["logits"].shape == (6, 1)
    terms, _ = loss_terms(out, torch.randn(6), LossWeights(kl=0.01), None, None, TRI, "regression")
    assert "mse" in terms and {"aux_text", "aux_audio", "aux_video", "contrastive"} <= set(terms)
    sum(v * w for v, w in terms.values()).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    # token projections exist only for xattn, which uses them
    assert unused == [], f"{fusion}: no gradient for {unused}"


@pytest.mark.parametrize("fusion", MULTI)
def test_forward_dropping_equals_forward_without_the_modality_for_three(fusion):
    torch.manual_seed(0)
    model = build_model(feature_cfg(fusion), None).eval()
    batch = feature_batch(3)
    keeps = [(1.0, 1.0, 1.0), (0.0, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, 0.0)]
    got = model.forward_dropping(*model_inputs(model, batch), keeps=keeps)
    for keep, out in zip(keeps, got):
        dropped = dict(batch, mask=batch["mask"] * torch.tensor(keep))
        for i, m in enumerate(TRI):
            dropped[m] = batch[m] * keep[i]
        with torch.no_grad():
            want = model(*model_inputs(model, dropped))
        for key in ("logits", "modality_weights"):
            torch.testing.assert_close(out[key], want[key], atol=1e-5, rtol=0, msg=f"{fusion} {keep} {key}")


def test_unimodal_feature_model_and_a_teacher_reading_a_trimodal_batch():
    torch.manual_seed(0)
    teacher = build_model(feature_cfg("audio", ("audio",), task="regression"), None).eval()
    assert list(teacher.encoders) == ["audio"] and len(teacher.aux) == 0
    batch = feature_batch(4)
    args = model_inputs(teacher, batch, TRI)  # picks the audio input, mask column and lengths
    assert len(args) == 3 and args[0] is batch["audio"] and args[1].shape == (4, 1)
    assert teacher(*args)["logits"].shape == (4, 1)
    with pytest.raises(ValueError, match="two or more modalities"):
        build_model(feature_cfg("gated", ("audio",)), None)
    with pytest.raises(ValueError, match="text-only baseline needs text"):
        build_model(feature_cfg("text", ("audio", "video")), None)


def test_gate_starts_at_the_configured_share_for_any_number_of_modalities(geo, tiny_dims):
    torch.manual_seed(0)
    three = build_model(feature_cfg("gated"), None).eval()
    w = three(*model_inputs(three, feature_batch(4)))["modality_weights"]
    assert torch.all(three.fusion.gate.bias.abs() < 1e-12)  # first share 1/3: every modality starts equal
    torch.testing.assert_close(w, torch.full((4, 3), 1 / 3), atol=0.08, rtol=0)  # weights ~N(0, 0.01) only
    clip = build_model(ModelConfig(fusion="gated", num_classes=4, **tiny_dims), geo)
    assert float(torch.sigmoid(clip.fusion.gate.bias)) == pytest.approx(0.3)  # audio share 0.3, as always


# ---------------------------------------------------------------- feature encoders
@pytest.mark.parametrize("kind", ["mlp", "lstm", "transformer"])
def test_feature_encoders_ignore_what_is_after_the_length(kind):
    torch.manual_seed(0)
    cfg = feature_cfg("gated")
    enc = build_feature_encoder(kind, 5, 16, cfg, max_len=10, sequence_dim=16).eval()
    x = torch.randn(3, 10, 5)
    lengths = torch.tensor([3, 10, 1])
    garbage = x.clone()
    for i, n in enumerate(lengths.tolist()):
        garbage[i, n:] = 100.0
    with torch.no_grad():
        e1, t1 = enc.forward_with_sequence(x, lengths)
        e2, t2 = enc.forward_with_sequence(garbage, lengths)
    assert e1.shape == (3, 16) and t1.shape == (3, 10, 16)
    torch.testing.assert_close(e1, e2, atol=1e-5, rtol=0)
    torch.testing.assert_close(t1, t2, atol=1e-5, rtol=0)
    assert torch.all(t1[2, 1:] == 0)  # no tokens on the padding
    torch.testing.assert_close(enc(x, lengths), e1)


# ---------------------------------------------------------------- losses
def test_contrastive_pairs_all_and_against_text():
    g = torch.Generator().manual_seed(0)
    z = {m: torch.randn(8, 4, generator=g) for m in TRI}
    pairs = [info_nce(z["text"], z["audio"]), info_nce(z["text"], z["video"]), info_nce(z["audio"], z["video"])]
    torch.testing.assert_close(contrastive_loss(z, "all"), sum(pairs) / 3)  # AttentionRobustV4
    text = info_nce(z["audio"], z["text"]) + info_nce(z["video"], z["text"])  # seed 002
    torch.testing.assert_close(contrastive_loss(z, "text"), text)
    two = {"audio": z["audio"], "video": z["video"]}
    assert torch.equal(contrastive_loss(two, "all"), info_nce(z["audio"], z["video"]))  # the clip model's term
    with pytest.raises(ValueError, match="need text"):
        contrastive_loss(two, "text")


def test_regression_losses_and_gaussian_distillation():
    pred, y = torch.tensor([[0.5], [-1.0], [2.0]]), torch.tensor([1.0, -1.0, 0.0])
    assert float(regression_loss(pred, y, "mse")) == pytest.approx((0.25 + 0 + 4) / 3)
    assert float(regression_loss(pred, y, "l1")) == pytest.approx((0.5 + 0 + 2) / 3)
    teacher = torch.tensor([[1.5], [-1.0], [1.0]])
    assert float(gaussian_distillation(pred, teacher)) == pytest.approx(0.5 * (1 + 0 + 1) / 3)
    assert float(gaussian_distillation(teacher, teacher)) == 0.0


def test_gate_regulariser_over_m_shares_reduces_to_the_two_modality_one():
    g = torch.tensor([[0.2], [0.7], [0.5]])
    two = torch.cat([g, 1 - g], dim=1)
    assert float(gate_regularisation(g)) == pytest.approx(float(gate_regularisation(two)))
    three = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    assert float(gate_regularisation(three[:1])) == pytest.approx(0.0, abs=1e-7)
    assert float(gate_regularisation(three[1:])) == pytest.approx(0.5 * ((2 / 3) ** 2 + 2 * (1 / 3) ** 2))
    assert float(gate_regularisation(three[:1], "entropy")) == pytest.approx(0.0, abs=1e-6)
