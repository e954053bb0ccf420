"""Checkpoint -> one self-contained ONNX file inside a Triton model repository, with a parity check.

The model is rebuilt from the checkpoint alone (config, labels, geometry). Export traces with batch 2
and checks onnxruntime against eager PyTorch on *different* inputs (batch 3, other random values,
one window with a missing modality); a disagreement beyond ``atol`` fails the export.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from avemo.contract import tensors
from avemo.contract.endpoint import MODEL_NAME
from avemo.contract.geometry import WindowGeometry
from avemo.export.triton_repo import MAX_BATCH_SIZE, ONNX_FILENAME, write_model_repository
from avemo.training.models.checkpoint import load_checkpoint, model_from_checkpoint
from avemo.training.models.model import ExportWrapper

OPSET = 18
MIN_OPSET = 17  # the dynamo exporter's floor
PARITY_ATOL = 1e-4  # max |probs_onnx - probs_torch| and |weights_onnx - weights_torch| allowed


class ParityError(RuntimeError):
    """onnxruntime and PyTorch disagree beyond the stated tolerance."""


@dataclass
class ExportReport:
    model_dir: str
    onnx_path: str
    fusion: str
    labels: list[str]
    opset: int
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    atol: float = PARITY_ATOL
    smoke_ms: float = 0.0
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


def example_inputs(geometry: WindowGeometry, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random contract inputs: audio [B, S] f32, frames [B, F, H, W, 3] u8, mask [B, 2] f32 (one missing modality)."""
    g = torch.Generator().manual_seed(seed)
    audio = 0.3 * torch.randn(batch, geometry.window_samples, generator=g)
    frames = torch.randint(
        0,
        256,
        (batch, geometry.frames_per_window, geometry.face_size, geometry.face_size, 3),
        generator=g,
        dtype=torch.uint8,
    )
    mask = torch.ones(batch, 2)
    if batch > 1:
        mask[1, seed % 2] = 0.0
        if seed % 2 == 0:
            audio[1] = 0.0
        else:
            frames[1] = 0
    return audio, frames, mask


def to_onnx(wrapper: ExportWrapper, geometry: WindowGeometry, path: Path, opset: int = OPSET) -> Path:
    """Export with a dynamic batch dim and the contract's tensor names; save one self-contained file."""
    names_in = [t.name for t in tensors.INPUTS]
    names_out = [t.name for t in tensors.OUTPUTS]
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        wrapper,
        example_inputs(geometry, 2, seed=0),
        input_names=names_in,
        output_names=names_out,
        dynamic_shapes={n: {0: batch} for n in names_in},
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path))
    return path


def parity(
    wrapper: ExportWrapper, onnx_path: Path, geometry: WindowGeometry, batch: int = 3, seed: int = 1
) -> dict[str, float]:
    """Max abs difference per output between onnxruntime and eager PyTorch on fresh inputs."""
    inputs = example_inputs(geometry, batch, seed)
    with torch.no_grad():
        eager = [t.numpy() for t in wrapper(*inputs)]
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feed = {t.name: x.numpy() for t, x in zip(tensors.INPUTS, inputs)}
    got = sess.run([t.name for t in tensors.OUTPUTS], feed)
    return {t.name: float(np.abs(a - b).max()) for t, a, b in zip(tensors.OUTPUTS, got, eager)}


def export_checkpoint(
    checkpoint: Path,
    repository: Path,
    model_name: str = MODEL_NAME,
    version: int = 1,
    opset: int = OPSET,
    atol: float = PARITY_ATOL,
    max_batch_size: int = MAX_BATCH_SIZE,
    instance_count: int = 1,
) -> ExportReport:
    """Export a checkpoint into ``repository/model_name`` and return a report; raises ParityError."""
    t0 = time.time()
    ckpt = load_checkpoint(checkpoint)
    model, _ = model_from_checkpoint(ckpt)
    geometry = WindowGeometry.from_dict(ckpt["geometry"])
    wrapper = ExportWrapper(model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_tmp = to_onnx(wrapper, geometry, Path(tmp) / "model.onnx", opset)
        diffs = parity(wrapper, onnx_tmp, geometry)
        bad = {k: v for k, v in diffs.items() if not v <= atol}
        if bad:
            raise ParityError(
                f"onnxruntime and PyTorch disagree beyond atol={atol}: "
                + ", ".join(f"{k} max|diff|={v:.3g}" for k, v in bad.items())
            )
        extra = {
            "fusion": ckpt["model_config"]["fusion"],
            "checkpoint": Path(checkpoint).name,
            "val_macro_f1": f"{ckpt['metrics'].get('val_macro_f1', float('nan')):.4f}",
        }
        model_dir = write_model_repository(
            repository,
            model_name,
            onnx_tmp,
            ckpt["labels"],
            geometry,
            version=version,
            max_batch_size=max_batch_size,
            instance_count=instance_count,
            extra_parameters=extra,
        )
    onnx_path = Path(model_dir) / str(version) / ONNX_FILENAME
    smoke_ms = smoke_run(onnx_path, geometry)
    return ExportReport(
        str(model_dir),
        str(onnx_path),
        extra["fusion"],
        list(ckpt["labels"]),
        opset,
        diffs,
        atol,
        round(smoke_ms, 2),
        round(time.time() - t0, 1),
    )


def smoke_run(onnx_path: Path, geometry: WindowGeometry) -> float:
    """Run the repository's ONNX file once with onnxruntime; returns milliseconds for a batch of 1."""
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs = example_inputs(geometry, 1, seed=2)
    t = time.perf_counter()
    probs, weights = sess.run(None, {t.name: x.numpy() for t, x in zip(tensors.INPUTS, inputs)})
    ms = (time.perf_counter() - t) * 1000
    if not np.allclose(probs.sum(-1), 1.0, atol=1e-4) or weights.shape != (1, 2):
        raise ParityError(
            f"smoke run of {onnx_path} gave malformed outputs: probs sum {probs.sum(-1)}, weights {weights.shape}"
        )
    return ms
