"""Checkpoint wrapper -> TorchScript ``model.pt`` for Triton's ``pytorch_libtorch`` backend, with a parity check.

Traced (not scripted: the fusions' Python control flow is fixed per model, and tracing records exactly
the path the exported ONNX takes) with batch 2; checked against eager PyTorch on a *different* shape
(batch 3, other values, one window with a missing modality), like the ONNX export. Tracing can bake a
size into the graph where the code reads ``x.shape`` into Python arithmetic; the second shape is what
catches that.

Triton's libtorch backend binds inputs by the ``forward`` argument names (``audio``, ``frames``,
``modality_mask``; a feature model's ``text``, ``text_lengths``, ...: the contract's names, checked here)
and outputs by their order in config.pbtxt (``probs`` or ``prediction``, then ``modality_weights``), so
the served tensors keep the contract's names.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import torch

from avemo.export.onnx_export import Spec, example_inputs, input_names, output_names

TORCHSCRIPT_FILENAME = "model.pt"


def forward_argument_names(module: torch.jit.ScriptModule) -> list[str]:
    """Names of ``forward``'s arguments after ``self``, as the libtorch backend sees them."""
    return [a.name for a in module.forward.schema.arguments[1:]]  # type: ignore[attr-defined]  # a ScriptMethod


def to_torchscript(wrapper: torch.nn.Module, spec: Spec, path: Path) -> Path:
    """Trace with batch 2 and save; raises ValueError when the traced inputs lose the contract's names."""
    inputs = example_inputs(spec, 2, seed=0)
    with torch.no_grad(), _quiet():
        traced = torch.jit.trace(wrapper.eval(), inputs, check_trace=False)
        # Not frozen: weights stay parameters, which the backend's torch::jit::load(path, device) places on
        # the instance's GPU like any module's.
        names = forward_argument_names(traced)
        want = input_names(spec)
        if names != want:
            raise ValueError(f"traced forward takes {names}, the serving contract needs {want}")
        torch.jit.save(traced, str(path))
    return Path(path)


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with _quiet():
        return torch.jit.load(str(path), map_location="cpu")


@contextlib.contextmanager
def _quiet():
    """Torch 2.14 marks the torch.jit API deprecated (FutureWarning); Triton's libtorch backend still loads
    exactly this format. "Converting a tensor to a Python index" TracerWarnings are shape reads that the
    parity check on a second batch size covers."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def torchscript_parity(
    wrapper: torch.nn.Module, pt_path: Path, spec: Spec, batch: int = 3, seed: int = 1
) -> dict[str, float]:
    """Max abs difference per output between the saved TorchScript file and eager PyTorch on fresh inputs."""
    inputs = example_inputs(spec, batch, seed)
    loaded = load_torchscript(pt_path)
    with torch.no_grad():
        eager = [t.numpy() for t in wrapper(*inputs)]
        got = [t.numpy() for t in loaded(*inputs)]
    diffs = {}
    for name, a, b in zip(output_names(spec), got, eager):
        diffs[name] = float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")
    return diffs
