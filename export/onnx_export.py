"""Export wrapper -> one self-contained ONNX file, with a parity check and a graph check.

Export traces with batch 2 and checks onnxruntime against eager PyTorch on *different* inputs (batch 3,
other random values, one window with a missing modality); a disagreement beyond ``atol`` fails the
export. The graph must hold no ``STFT``/``DFT`` node (``FORBIDDEN_OPS``): those have no CUDA kernel in
onnxruntime and were 78% of its CPU time; the front end is a convolution instead
(``training.models.frontend``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from avemo.contract import tensors
from avemo.contract.geometry import WindowGeometry
from avemo.training.models.model import ExportWrapper

OPSET = 18
MIN_OPSET = 17  # the dynamo exporter's floor
PARITY_ATOL = 1e-4  # max |probs_export - probs_torch| and |weights_export - weights_torch| allowed (ONNX, TorchScript)
# The production image's onnxruntime (1.19.2 in Triton 24.10, see Dockerfile) loads IR <= 10, opset <= 21.
MAX_IR_VERSION = 10
FORBIDDEN_OPS = ("STFT", "DFT")  # no CUDA kernel in onnxruntime: the node would fall back to the CPU


class ParityError(RuntimeError):
    """An exported model and eager PyTorch disagree beyond the stated tolerance, or the graph is unfit."""


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
    proto = program.model_proto  # the graph just saved: checked without reading the file back
    if proto.ir_version > MAX_IR_VERSION:
        raise ParityError(
            f"{path} has ONNX IR version {proto.ir_version}; the production image loads <= {MAX_IR_VERSION}"
        )
    forbidden = sorted(set(FORBIDDEN_OPS) & graph_op_types(proto))
    if forbidden:
        raise ParityError(f"{path} holds {forbidden} nodes; the log-mel front end must be a convolution")
    return path


def graph_op_types(model: Path | onnx.ModelProto) -> set[str]:
    """Every op type in the ONNX graph (a file or a loaded model), subgraphs and local functions included."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    ops: set[str] = set()

    def walk(graph) -> None:
        for node in graph.node:
            ops.add(node.op_type)
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(model.graph)
    for fn in model.functions:
        ops.update(n.op_type for n in fn.node)
    return ops


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
