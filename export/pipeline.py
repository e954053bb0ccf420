"""Checkpoint -> exported files (ONNX, TorchScript) -> Triton model repository, every step checked.

    report = export_checkpoint(Path("runs/gated/best.pt"), Path("model_repository"), backends=("python",))

The model is rebuilt from the checkpoint alone (config, labels, window geometry or feature signature). Each
format is exported once and checked against eager PyTorch on another batch size (``PARITY_ATOL``); each
flavour's model folder is written from the one contract table and its config.pbtxt checked with
Triton's schema against the file it serves (``export.config_check``); the ONNX file ends with an onnxruntime smoke run.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from avemo.contract.dialogues import DialogueSignature
from avemo.contract.endpoint import MAX_QUEUE_SIZE, MODEL_NAME
from avemo.contract.features import FeatureSignature
from avemo.contract.geometry import WindowGeometry
from avemo.export.config_check import check_model_dir
from avemo.export.onnx_export import OPSET, PARITY_ATOL, ParityError, Spec, parity, smoke_run, to_onnx_with_fallback
from avemo.export.torchscript_export import TORCHSCRIPT_FILENAME, to_torchscript, torchscript_parity
from avemo.export.triton_config import FLAVOURS, MAX_BATCH_SIZE, flavour_model_name
from avemo.export.triton_repo import ONNX_FILENAME, write_model_repository
from avemo.training.models.checkpoint import load_checkpoint, model_from_checkpoint
from avemo.training.models.feature_export import (
    dialogue_export_wrapper,
    dialogue_signature_of,
    feature_export_wrapper,
    feature_signature_of,
)
from avemo.training.models.model import ExportWrapper

if TYPE_CHECKING:
    import torch

FORMATS = ("onnx", "torchscript")
BACKENDS = tuple(FLAVOURS)


@dataclass
class ServedModelReport:
    flavour: str  # python | onnxruntime | libtorch
    name: str  # model name in the repository
    model_dir: str
    version: int
    file: str  # the exported file this flavour serves


@dataclass
class ExportReport:
    model_dir: str  # the first flavour's model folder
    onnx_path: str  # the ONNX file in the repository ("" when no ONNX flavour was written)
    fusion: str
    labels: list[str]
    opset: int
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # "<format>/<output>" -> max |export - eager|
    atol: float = PARITY_ATOL
    smoke_ms: float = 0.0
    seconds: float = 0.0
    formats: list[str] = field(default_factory=list)
    models: list[ServedModelReport] = field(default_factory=list)
    onnx_exporter: str = ""  # "dynamo", or "legacy (dynamo failed: <why>)"; "" without ONNX
    kind: str = "clip"  # clip | features | dialogue
    task: str = "classification"  # classification | regression

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def resolve_formats(backends: Sequence[str], formats: Sequence[str] | None) -> list[str]:
    """The formats to export: what the backends serve, plus any asked for; refuses a backend whose format
    was explicitly left out (``--backend libtorch --format onnx``)."""
    unknown = [b for b in backends if b not in FLAVOURS]
    if unknown or not backends:
        raise ValueError(f"unknown backend(s) {unknown or backends}; expected some of {list(BACKENDS)} or all")
    needed = [FLAVOURS[b].artefact for b in backends]
    if formats is None:
        return [f for f in FORMATS if f in needed]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown format(s) {bad}; expected some of {list(FORMATS)} or all")
    missing = [b for b in backends if FLAVOURS[b].artefact not in formats]
    if missing:
        raise ValueError(
            f"backend(s) {missing} serve {sorted({FLAVOURS[b].artefact for b in missing})}, "
            f"which --format {','.join(formats)} leaves out"
        )
    return [f for f in FORMATS if f in formats]


def export_checkpoint(
    checkpoint: Path,
    repository: Path,
    model_name: str | None = None,
    version: int = 1,
    opset: int = OPSET,
    atol: float = PARITY_ATOL,
    max_batch_size: int = MAX_BATCH_SIZE,
    instance_count: int = 1,
    *,
    backends: Sequence[str] = ("python",),
    formats: Sequence[str] | None = None,
    version_policy: str = "latest:1",
    device: str = "gpu",
    tensorrt: bool = False,
    max_queue_size: int = MAX_QUEUE_SIZE,
) -> ExportReport:
    """Export a checkpoint into ``repository`` (one model folder per backend flavour); raises ParityError
    (an export disagrees with eager PyTorch) or ValueError (bad options, or a config Triton would refuse).
    ``model_name`` defaults to ``default_model_name(checkpoint)``: the clip model and a feature model of each
    dataset live side by side in one repository."""
    t0 = time.time()
    formats = resolve_formats(list(backends), formats)
    if max_queue_size < 0:
        raise ValueError(f"max_queue_size must be >= 0 (0 = unbounded), got {max_queue_size}")
    if tensorrt and "onnxruntime" not in backends:
        raise ValueError("--tensorrt is an accelerator of the onnxruntime flavour: add --backend onnxruntime (or all)")
    ckpt = load_checkpoint(checkpoint)
    if ckpt["model_config"].get("fusion") == "joyful":
        raise ValueError(
            f"{checkpoint} is a JOYFUL model: its relational graph builds its edges with sizes that depend on the "
            "data (a window of utterances per utterance, torch_geometric message passing), which the ONNX and "
            "TorchScript exporters do not trace; conversation models with --fusion other than joyful export "
            "(see docs/dialogues.md)"
        )
    model, _ = model_from_checkpoint(ckpt)
    spec: Spec
    wrapper: torch.nn.Module
    model_name = model_name or default_model_name(ckpt)
    if ckpt["model_config"].get("num_speakers"):
        spec = dialogue_signature_of(ckpt)
        wrapper = dialogue_export_wrapper(model, spec).eval()
    elif ckpt["model_config"].get("input_dims"):
        spec = feature_signature_of(ckpt)
        wrapper = feature_export_wrapper(model, spec).eval()
    else:
        spec = WindowGeometry.from_dict(ckpt["geometry"])
        wrapper = ExportWrapper(model).eval()
    metrics = ckpt.get("metrics", {})
    extra = {"fusion": ckpt["model_config"]["fusion"], "checkpoint": Path(checkpoint).name}
    # val_score: what picked the checkpoint (training.train.loop.selection_score): -MSE for regression, the
    # validation weighted F1 for conversations, macro-F1 otherwise
    score = metrics.get("val_score", metrics.get("val_macro_f1", float("nan")))
    if isinstance(spec, FeatureSignature) and spec.task == "regression":
        extra["val_mse"] = f"{-score:.4f}"
    elif isinstance(spec, DialogueSignature):
        extra["val_weighted_f1"] = f"{score:.4f}"
    else:
        extra["val_macro_f1"] = f"{metrics.get('val_macro_f1', score):.4f}"
    diffs: dict[str, float] = {}
    onnx_exporter = ""
    models: list[ServedModelReport] = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        if "onnx" in formats:
            files["onnx"], onnx_exporter = to_onnx_with_fallback(wrapper, spec, Path(tmp) / ONNX_FILENAME, opset)
            diffs.update({f"onnx/{k}": v for k, v in parity(wrapper, files["onnx"], spec).items()})
        if "torchscript" in formats:
            files["torchscript"] = to_torchscript(wrapper, spec, Path(tmp) / TORCHSCRIPT_FILENAME)
            diffs.update(
                {f"torchscript/{k}": v for k, v in torchscript_parity(wrapper, files["torchscript"], spec).items()}
            )
        bad = {k: v for k, v in diffs.items() if not v <= atol}
        if bad:
            raise ParityError(
                f"exported model and PyTorch disagree beyond atol={atol}: "
                + ", ".join(f"{k} max|diff|={v:.3g}" for k, v in bad.items())
            )
        served = {FLAVOURS[b].artefact for b in backends}
        unserved = [files[f] for f in formats if f not in served]  # kept next to the first flavour's file
        for i, backend in enumerate(backends):
            fl = FLAVOURS[backend]
            name = flavour_model_name(model_name, backend)
            model_dir = write_model_repository(
                repository,
                name,
                files[fl.artefact],
                ckpt["labels"],
                spec,
                flavour=backend,
                version=version,
                version_policy=version_policy,
                max_batch_size=max_batch_size,
                max_queue_size=max_queue_size,
                instance_count=instance_count,
                device=device,
                tensorrt=tensorrt and backend == "onnxruntime",
                extra_parameters=extra,
                extra_files=unserved if i == 0 else (),
            )
            check_model_dir(model_dir, spec, version)
            models.append(
                ServedModelReport(backend, name, str(model_dir), version, str(model_dir / str(version) / fl.filename))
            )
    onnx_path = next((m.file for m in models if m.file.endswith(".onnx")), "")
    smoke_ms = smoke_run(Path(onnx_path), spec) if onnx_path else 0.0
    return ExportReport(
        models[0].model_dir,
        onnx_path,
        extra["fusion"],
        list(ckpt["labels"]),
        opset,
        diffs,
        atol,
        round(smoke_ms, 2),
        round(time.time() - t0, 1),
        formats,
        models,
        onnx_exporter,
        {FeatureSignature: "features", DialogueSignature: "dialogue"}.get(type(spec), "clip"),
        spec.task if isinstance(spec, FeatureSignature) else "classification",
    )


def default_model_name(ckpt: dict) -> str:
    """``emotion`` for the clip model, the dataset's name (``mosei``, ``iemocap``, ...) for a feature model."""
    if not ckpt["model_config"].get("input_dims"):
        return MODEL_NAME
    sig = dialogue_signature_of(ckpt) if ckpt["model_config"].get("num_speakers") else feature_signature_of(ckpt)
    return sig.dataset or "features"
