"""A tiny contract-conforming model, exported to a single self-contained ONNX file.

Used by the serving tests: it has the real serving signature

    audio [B, S] float32, frames [B, F, H, W, 3] uint8, modality_mask [B, 2] float32
    -> probs [B, C] float32 (softmax), modality_weights [B, 2] float32 (sum to 1 over present modalities)

but computes its output from a handful of statistics, so export and inference take milliseconds.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from avemo.contract.geometry import WindowGeometry
from avemo.contract.tensors import AUDIO, FRAMES, MODALITY_MASK, MODALITY_WEIGHTS, PROBS


def build_tiny_model(num_classes: int, seed: int = 0):
    import torch
    from torch import nn

    class TinyEmotion(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            self.audio_head = nn.Linear(3, num_classes)
            self.video_head = nn.Linear(3, num_classes)
            self.gate = nn.Linear(6, 2)
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.randn(p.shape, generator=g))

        def forward(self, audio, frames, modality_mask):
            a = torch.stack([audio.mean(dim=1), audio.abs().mean(dim=1), (audio * audio).mean(dim=1)], dim=1)
            f = frames.to(torch.float32) / 255.0
            v = torch.stack(
                [f.mean(dim=(1, 2, 3, 4)), f[..., 0].mean(dim=(1, 2, 3)), f[..., 2].mean(dim=(1, 2, 3))], dim=1
            )
            am = modality_mask[:, 0:1]
            vm = modality_mask[:, 1:2]
            a = a * am
            v = v * vm
            gate = self.gate(torch.cat([a, v], dim=1))
            # absent modalities get (almost) zero weight
            gate = gate + (modality_mask - 1.0) * 1e4
            weights = torch.softmax(gate, dim=1)
            logits = weights[:, 0:1] * self.audio_head(a) + weights[:, 1:2] * self.video_head(v)
            return torch.softmax(logits, dim=1), weights

    return TinyEmotion().eval()


def example_inputs(geometry: WindowGeometry, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    s, f, size = geometry.window_samples, geometry.frames_per_window, geometry.face_size
    return {
        AUDIO: (0.3 * rng.standard_normal((batch, s))).astype(np.float32),
        FRAMES: rng.integers(0, 256, size=(batch, f, size, size, 3), dtype=np.uint8),
        MODALITY_MASK: np.ones((batch, 2), dtype=np.float32),
    }


def export_tiny_onnx(path: Path, geometry: WindowGeometry, num_classes: int, seed: int = 0) -> Path:
    """Export the tiny model with a dynamic batch dim to ONE self-contained ONNX file."""
    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(num_classes, seed)
    ex = example_inputs(geometry, batch=2, seed=seed)
    args = tuple(torch.from_numpy(ex[k]) for k in (AUDIO, FRAMES, MODALITY_MASK))
    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name.*")
        _export(torch, model, args, path, batch)
    # make sure the result is a single file, whatever the exporter did
    proto = onnx.load(str(path), load_external_data=True)
    onnx.save(proto, str(path), save_as_external_data=False)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    return path


def _export(torch, model, args, path: Path, batch) -> None:
    torch.onnx.export(
        model,
        args,
        str(path),
        input_names=[AUDIO, FRAMES, MODALITY_MASK],
        output_names=[PROBS, MODALITY_WEIGHTS],
        dynamic_shapes={"audio": {0: batch}, "frames": {0: batch}, "modality_mask": {0: batch}},
        opset_version=18,
        dynamo=True,
        external_data=False,
    )
