"""Model shapes, mask handling, loss decreasing on a tiny batch, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from avemo.training.losses.terms import class_weights, total_loss
from avemo.training.models.checkpoint import atomic_torch_save, load_checkpoint, make_checkpoint, model_from_checkpoint
from avemo.training.models.config import FUSIONS, ModelConfig
from avemo.training.models.model import ExportWrapper, build_model, modality_dropout

# ``geo`` (1 s windows), ``tiny_dims`` (encoder widths) and ``tiny_batch`` are conftest.py fixtures.


@pytest.mark.parametrize("fusion", FUSIONS)
def test_output_shapes(fusion, geo, tiny_dims, tiny_batch):
    model = build_model(ModelConfig(fusion=fusion, num_classes=8, **tiny_dims), geo).eval()
    out = model(*tiny_batch(3))
    assert out["logits"].shape == (3, 8)
    assert out["modality_weights"].shape == (3, 2)
    probs, weights = ExportWrapper(model)(*tiny_batch(3))
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    assert weights.shape == (3, 2)
    if fusion == "audio":
        torch.testing.assert_close(weights, torch.tensor([[1.0, 0.0]] * 3))
    if fusion == "video":
        torch.testing.assert_close(weights, torch.tensor([[0.0, 1.0]] * 3))


def test_gate_starts_video_favoured_and_honours_mask(geo, tiny_dims, tiny_batch):
    model = build_model(ModelConfig(fusion="gated", gate_init_audio=0.3, **tiny_dims), geo).eval()
    audio, frames, mask = tiny_batch(3)
    w = model(audio, frames, mask)["modality_weights"]
    assert torch.all((w[:, 0] > 0.2) & (w[:, 0] < 0.4)), w  # audio share near 0.3 at init
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    w = model(audio, frames, mask)["modality_weights"]
    torch.testing.assert_close(w[0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(w[1], torch.tensor([0.0, 1.0]))
    # a missing modality's content must not change the prediction
    frames2 = torch.randint(0, 256, frames.shape, dtype=torch.uint8)
    p1 = model(audio, frames, mask)["logits"][0]
    p2 = model(audio, frames2, mask)["logits"][0]
    torch.testing.assert_close(p1, p2)


def test_modality_dropout_never_drops_both():
    torch.manual_seed(0)
    mask = torch.ones(10_000, 2)
    dropped = modality_dropout(mask, 0.2)
    assert torch.all(dropped.sum(1) >= 1)
    rate = 1 - dropped.mean(0)
    assert torch.all((rate > 0.12) & (rate < 0.25)), rate
    single = torch.tensor([[1.0, 0.0]] * 100)
    assert torch.equal(modality_dropout(single, 0.9), single)


def test_loss_decreases_on_tiny_batch(geo, tiny_dims, tiny_batch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(fusion="gated", num_classes=4, modality_dropout=0.0, dropout=0.0, **tiny_dims), geo)
    audio, frames, mask = tiny_batch(8)
    target = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss, parts = total_loss(model(audio, frames, mask), target, class_weights(target, 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["total"])
    assert set(parts) == {"ce", "aux_audio", "aux_video", "total"}
    assert losses[-1] < 0.5 * losses[0], losses


def test_class_weights_inverse_frequency():
    w = class_weights([0, 0, 0, 1], 2)
    assert w[1] / w[0] == pytest.approx(3.0)
    assert w.mean() == pytest.approx(1.0)


def test_checkpoint_round_trip_weights_only(tmp_path, geo, tiny_dims, tiny_batch):
    cfg = ModelConfig(fusion="gated", num_classes=4, **tiny_dims)
    model = build_model(cfg, geo).eval()
    path = tmp_path / "best.pt"
    atomic_torch_save(make_checkpoint(model, cfg, ["a", "b", "c", "d"], geo, {"val_macro_f1": 0.5}), path)
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temporary file left behind
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["labels"] == ["a", "b", "c", "d"] and ckpt["geometry"]["window_seconds"] == 1.0
    rebuilt, _ = model_from_checkpoint(path)
    x = tiny_batch(2)
    torch.testing.assert_close(rebuilt(*x)["logits"], model(*x)["logits"])


def test_load_checkpoint_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
