"""Export wrapper -> one self-contained ONNX file, with a parity check and a graph check.

Export traces with batch 2 and checks onnxruntime against eager PyTorch on *different* inputs (batch 3,
other random values, one window with a missing modality); a disagreement beyond ``atol`` fails the
export. The graph must hold no ``STFT``/``DFT`` node (``FORBIDDEN_OPS``): those have no CUDA kernel in
onnxruntime and were 78% of its CPU time; the front end is a convolution instead
(``training.models.frontend``).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from avemo.contract import tensors
from avemo.contract.dialogues import SIGNATURES, DialogueSignature
from avemo.contract.features import FeatureSignature
from avemo.export.triton_config import Spec

OPSET = 18
MIN_OPSET = 17  # the dynamo exporter's floor
PARITY_ATOL = 1e-4  # max |probs_export - probs_torch| and |weights_export - weights_torch| allowed (ONNX, TorchScript)
# The production image's onnxruntime (1.22.0 in Triton 25.07, see Dockerfile) loads IR <= 10, opset <= 22.
MAX_IR_VERSION = 10
FORBIDDEN_OPS = ("STFT", "DFT")  # no CUDA kernel in onnxruntime: the node would fall back to the CPU


class ParityError(RuntimeError):
    """An exported model and eager PyTorch disagree beyond the stated tolerance, or the graph is unfit."""


def input_names(spec: Spec) -> list[str]:
    """The exported graph's input names, in argument order."""
    return [t.name for t in (spec.inputs if isinstance(spec, SIGNATURES) else tensors.INPUTS)]


def output_names(spec: Spec) -> list[str]:
    """The exported graph's output names, in order."""
    return [t.name for t in (spec.outputs if isinstance(spec, SIGNATURES) else tensors.OUTPUTS)]


def example_inputs(spec: Spec, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Random contract inputs, one tensor per graph input (``input_names``); with batch >= 2, row 1 lacks a
    modality. Clips: audio [B, S] f32, frames [B, F, H, W, 3] u8, mask [B, 2] f32. Features
    (``feature_example_inputs``): per modality [B, L, D] f32 and lengths [B, 1] i64, then mask [B, M] f32.
    Conversations (``dialogue_example_inputs``): one dialogue of 3 x ``batch`` utterances."""
    if isinstance(spec, FeatureSignature):
        return feature_example_inputs(spec, batch, seed)
    if isinstance(spec, DialogueSignature):
        return dialogue_example_inputs(spec, 3 * batch, seed)
    geometry = spec
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


def feature_example_inputs(sig: FeatureSignature, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Features [B, L, D] (zero after each row's valid length), lengths [B, 1] and mask [B, M]. The valid
    lengths differ with the seed and the row (the full length, one step, random in between), so a parity
    check on another seed and batch size meets lengths the trace never saw."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, len(sig.modalities))
    if batch > 1 and len(sig.modalities) > 1:
        mask[1, seed % len(sig.modalities)] = 0.0
    out: list[torch.Tensor] = []
    for i, m in enumerate(sig.modalities):
        steps = sig.seq_lens[m]
        lengths = torch.randint(1, steps + 1, (batch, 1), generator=g, dtype=torch.int64)
        lengths[0, 0] = steps
        if batch > 2:
            lengths[2, 0] = 1
        x = torch.randn(batch, steps, sig.dims[m], generator=g)
        x = x * (torch.arange(steps)[None, :, None] < lengths[:, :, None])
        x = x * mask[:, i, None, None]  # a missing modality is zeros
        out += [x, lengths]
    return (*out, mask)


def dialogue_example_inputs(sig: DialogueSignature, utterances: int, seed: int) -> tuple[torch.Tensor, ...]:
    """One dialogue: per modality [1, U, D] f32, speakers [1, U] i64 (random turns), mask [1, U, M] f32 with
    utterance 1 lacking a modality (when there are two or more)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(1, utterances, len(sig.modalities))
    if utterances > 1 and len(sig.modalities) > 1:
        mask[0, 1, seed % len(sig.modalities)] = 0.0
    xs = [torch.randn(1, utterances, sig.dims[m], generator=g) * mask[:, :, i, None] for i, m in
          enumerate(sig.modalities)]  # fmt: skip
    speakers = torch.randint(0, sig.num_speakers, (1, utterances), generator=g, dtype=torch.int64)
    return (*xs, speakers, mask)


def to_onnx(wrapper: torch.nn.Module, spec: Spec, path: Path, opset: int = OPSET) -> Path:
    """Export with a dynamic batch dim and the contract's tensor names; save one self-contained file."""
    names_in = input_names(spec)
    names_out = output_names(spec)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        # every input shares the one batch Dim: the exporter says it keeps one name for them, which is the intent
        warnings.filterwarnings("ignore", message=r".*axis name: \w+ will not be used", category=UserWarning)
        program = _export(wrapper, spec, names_in, names_out, batch, opset)
    program.save(str(path), external_data=False)
    check_graph(path, program.model_proto)  # the graph just saved: checked without reading the file back
    return path


def check_graph(path: Path, proto: onnx.ModelProto) -> None:
    """The saved file passes onnx's checker, loads in the production image (IR version) and holds no
    ``FORBIDDEN_OPS``."""
    onnx.checker.check_model(str(path))
    if proto.ir_version > MAX_IR_VERSION:
        raise ParityError(
            f"{path} has ONNX IR version {proto.ir_version}; the production image loads <= {MAX_IR_VERSION}"
        )
    forbidden = sorted(set(FORBIDDEN_OPS) & graph_op_types(proto))
    if forbidden:
        raise ParityError(f"{path} holds {forbidden} nodes; the log-mel front end must be a convolution")


def to_onnx_with_fallback(wrapper: torch.nn.Module, spec: Spec, path: Path, opset: int = OPSET) -> tuple[Path, str]:
    """``to_onnx`` (the dynamo exporter); where it fails, the TorchScript-based exporter (``dynamo=False``) with
    the same names and dynamic axes and the same checks. Returns (path, what was used: "dynamo", or "legacy"
    with the dynamo error). Some pretrained speech encoders have met dynamo failures in some torch and
    transformers releases; the legacy exporter traces them."""
    try:
        return to_onnx(wrapper, spec, path, opset), "dynamo"
    except ParityError:
        raise
    except Exception as e:  # noqa: BLE001 - any exporter failure: try the other exporter, say why
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
    names_in, names_out = input_names(spec), output_names(spec)
    axis = {n: {1: "utterances"} for n in names_in} if isinstance(spec, DialogueSignature) else {
        n: {0: "batch"} for n in names_in + names_out}  # fmt: skip
    with warnings.catch_warnings(), torch.no_grad():
        for category in (torch.jit.TracerWarning, DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category)
        torch.onnx.export(
            wrapper.eval(),
            example_inputs(spec, 2, seed=0),
            str(path),
            input_names=names_in,
            output_names=names_out,
            dynamic_axes=axis,
            opset_version=opset,
            dynamo=False,
        )
    check_graph(path, onnx.load(str(path)))
    return path, f"legacy (dynamo failed: {reason})"


def _export(wrapper: torch.nn.Module, spec: Spec, names_in: list[str], names_out: list[str], batch, opset: int):
    if isinstance(spec, DialogueSignature):  # one dialogue: batch 1, the utterance axis dynamic
        dynamic = {n: {1: torch.export.Dim("utterances", min=1, max=4096)} for n in names_in}
    else:
        dynamic = {n: {0: batch} for n in names_in}
    return torch.onnx.export(
        wrapper,
        example_inputs(spec, 2, seed=0),
        input_names=names_in,
        output_names=names_out,
        dynamic_shapes=dynamic,
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )


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


def parity(wrapper: torch.nn.Module, onnx_path: Path, spec: Spec, batch: int = 3, seed: int = 1) -> dict[str, float]:
    """Max abs difference per output between onnxruntime and eager PyTorch on fresh inputs."""
    inputs = example_inputs(spec, batch, seed)
    with torch.no_grad():
        eager = [t.numpy() for t in wrapper(*inputs)]
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feed = {name: x.numpy() for name, x in zip(input_names(spec), inputs)}
    got = sess.run(output_names(spec), feed)
    return {name: float(np.abs(a - b).max()) for name, a, b in zip(output_names(spec), got, eager)}


def smoke_run(onnx_path: Path, spec: Spec) -> float:
    """Run the repository's ONNX file once with onnxruntime; returns milliseconds for a batch of 1."""
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs = example_inputs(spec, 1, seed=2)
    t = time.perf_counter()
    first, weights = sess.run(output_names(spec), dict(zip(input_names(spec), (x.numpy() for x in inputs))))
    ms = (time.perf_counter() - t) * 1000
    modalities = len(spec.modalities) if isinstance(spec, SIGNATURES) else 2
    probs = not (isinstance(spec, FeatureSignature) and spec.task == "regression")
    if (probs and not np.allclose(first.sum(-1), 1.0, atol=1e-4)) or not np.isfinite(first).all():
        raise ParityError(f"smoke run of {onnx_path} gave malformed outputs: {output_names(spec)[0]} {first}")
    if weights.shape[0] != 1 or weights.shape[-1] != modalities:
        raise ParityError(
            f"smoke run of {onnx_path}: modality_weights {weights.shape}, expected (1, ..., {modalities})"
        )
    return ms
