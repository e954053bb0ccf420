"""config.pbtxt for each Triton flavour of one exported model, generated from ``contract.tensors``.

Three flavours of the same model, one table of tensors:

| flavour       | backend            | file in ``<version>/``   | model name        | instances          |
|---------------|--------------------|--------------------------|-------------------|--------------------|
| ``python``    | python             | model.onnx + model.py    | ``<name>``        | KIND_CPU (the stub |
|               |                    |                          |                   | runs ORT on CUDA   |
|               |                    |                          |                   | when present)      |
| ``onnxruntime``| onnxruntime       | model.onnx               | ``<name>_onnx``   | KIND_GPU (``--device gpu``) |
| ``libtorch``  | pytorch_libtorch   | model.pt (TorchScript)   | ``<name>_libtorch``| KIND_GPU (``--device gpu``) |

The embedded server (the nvidia-pytriton wheel) has only the Python backend: ``python`` is what it
serves; the native flavours are for the production image (``Dockerfile``). Each config carries the
window geometry and labels as ``parameters`` (what the client reads), a version policy, and
``model_warmup`` with sample data written next to it (``warmup/<input>``), so the first user request
is not the one that pays for lazy initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from avemo.contract.dialogues import SIGNATURES, SPEAKERS, DialogueSignature
from avemo.contract.endpoint import MAX_QUEUE_SIZE, QUEUE_TIMEOUT_US
from avemo.contract.features import FeatureSignature, lengths_name
from avemo.contract.geometry import WindowGeometry
from avemo.contract.tensors import (
    AUDIO,
    AUDIO_REFUSE_ABOVE,
    FRAMES,
    INPUTS,
    MODALITY_MASK,
    OUTPUTS,
    PROBS,
    TRITON_PBTXT_DTYPES,
    TensorSpec,
    resolve_dims,
)

# What a model is served for: the clip model's window geometry, or a feature / conversation model's signature
Spec = WindowGeometry | FeatureSignature | DialogueSignature
WARMUP_UTTERANCES = 8  # utterances of the warm-up dialogue of a conversation model

LABELS_FILENAME = "labels.txt"
WARMUP_DIRNAME = "warmup"

# batching defaults of config.pbtxt
MAX_BATCH_SIZE = 32
PREFERRED_BATCH_SIZES = (4, 8, 16)
# 0: a lone request runs at once. Requests that arrive while an instance is busy still queue up and run
# as one batch (the batcher takes what is queued), which is where batching pays; a positive delay only
# made every request at concurrency 1 wait for company that never came (2 ms of a ~5 ms graph).
MAX_QUEUE_DELAY_US = 0
WARMUP_BATCH_SIZES = (1, 8)  # warm-up runs per model at load time (capped by max_batch_size)

# parameters the writer owns; extra_parameters may not override them
GEOMETRY_PARAMETER_KEYS = ("sample_rate", "video_fps", "face_size", "window_seconds", "hop_seconds")
FEATURE_PARAMETER_KEYS = ("kind", "dataset", "layout", "task", "modalities", "feature_dims", "seq_lens")
OWNED_PARAMETER_KEYS = (
    GEOMETRY_PARAMETER_KEYS + FEATURE_PARAMETER_KEYS + ("labels", "num_classes", "window_samples", "frames_per_window")
)


def io_specs(spec: Spec, num_classes: int) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of the served model (dims without the batch dim; -1 = a conversation's utterances)."""
    if isinstance(spec, SIGNATURES):
        return spec.inputs, spec.outputs

    def concrete(specs):
        return tuple(TensorSpec(s.name, s.dtype, resolve_dims(s, spec, num_classes), s.meaning) for s in specs)

    return concrete(INPUTS), concrete(OUTPUTS)


@dataclass(frozen=True)
class Flavour:
    key: str  # --backend value
    backend: str  # Triton backend name
    suffix: str  # model name = <name><suffix>
    artefact: str  # export format it serves: "onnx" | "torchscript"
    filename: str  # file in the version folder
    native: bool  # runs without the Python stub (instance group follows --device)


FLAVOURS: dict[str, Flavour] = {
    "python": Flavour("python", "python", "", "onnx", "model.onnx", False),
    "onnxruntime": Flavour("onnxruntime", "onnxruntime", "_onnx", "onnx", "model.onnx", True),
    "libtorch": Flavour("libtorch", "pytorch_libtorch", "_libtorch", "torchscript", "model.pt", True),
}


def flavour_model_name(base: str, flavour: str) -> str:
    """The model name a flavour is served under: ``emotion``, ``emotion_onnx``, ``emotion_libtorch``."""
    return base + FLAVOURS[flavour].suffix


def pbtxt_str(value: str) -> str:
    """A quoted protobuf text-format string."""
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def validate_labels(labels: Sequence[str]) -> list[str]:
    labels = [str(x) for x in labels]
    if not labels:
        raise ValueError("labels must not be empty")
    for lab in labels:
        if not lab or lab != lab.strip() or "," in lab or "\n" in lab:
            raise ValueError(f"invalid label {lab!r}: labels must be non-empty, unpadded and contain no ',' or newline")
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate labels: {labels}")
    return labels


def validate_model_name(name: str) -> str:
    if not name or any(c in name for c in "/\\ \n\t") or name.startswith("."):
        raise ValueError(f"invalid model name {name!r}")
    return name


def parse_version_policy(policy: str) -> str:
    """``latest:N`` (serve the N newest version folders), ``all``, ``specific:1,3`` -> config.pbtxt text."""
    kind, _, arg = policy.partition(":")
    try:
        if kind == "latest":
            n = int(arg or 1)
            if n >= 1:
                return f"version_policy: {{ latest: {{ num_versions: {n} }} }}"
        elif kind == "all" and not arg:
            return "version_policy: { all: {} }"
        elif kind == "specific":
            versions = sorted({int(v) for v in arg.split(",") if v.strip()})
            if versions and versions[0] >= 1:
                return f"version_policy: {{ specific: {{ versions: [ {', '.join(map(str, versions))} ] }} }}"
    except ValueError:
        pass
    raise ValueError(f"invalid version policy {policy!r}: expected latest:N (N >= 1), all, or specific:V1,V2,...")


def config_parameters(
    labels: Sequence[str], spec: Spec, extra_parameters: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The string parameters stored in config.pbtxt (what the client reads back over gRPC): the window
    geometry and labels of a clip model, or a feature model's ``FeatureSignature.parameters()``."""
    labels = validate_labels(labels)
    if isinstance(spec, SIGNATURES):
        if list(spec.labels) != labels:
            raise ValueError(f"labels {labels} differ from the feature signature's {list(spec.labels)}")
        params = spec.parameters()
    else:
        params = _clip_parameters(labels, spec)
    for k, v in (extra_parameters or {}).items():
        if str(k) in OWNED_PARAMETER_KEYS:
            raise ValueError(f"extra parameter {k!r} would override a parameter written from the geometry/labels")
        params[str(k)] = str(v)
    return params


def _clip_parameters(labels: list[str], geometry: WindowGeometry) -> dict[str, str]:
    return {
        "kind": "clip",
        "sample_rate": str(int(geometry.sample_rate)),
        "video_fps": str(int(geometry.video_fps)),
        "face_size": str(int(geometry.face_size)),
        "window_seconds": repr(float(geometry.window_seconds)),
        "hop_seconds": repr(float(geometry.hop_seconds)),
        "window_samples": str(geometry.window_samples),
        "frames_per_window": str(geometry.frames_per_window),
        "labels": ",".join(labels),
        "num_classes": str(len(labels)),
    }


def flavour_parameters(flavour: str, spec: Spec | None = None) -> dict[str, str]:
    """Backend-specific parameters."""
    if flavour == "python" and isinstance(spec, SIGNATURES):
        return {
            "execution_provider": "auto",
            # one thread: a feature graph is a few passes over ~350 KB of input, which a second thread does not
            # speed up, while the other core serves gRPC (measured, 2 cores, c = 8: 980-1010 samples/s against
            # 880-900 with 2 threads; benchmarks/serving.py)
            "intra_op_threads": "1",
            # a request whose modality_mask has a row with nothing present is refused with INVALID_ARG
            "refuse_empty_mask": "true",
        }
    if flavour == "python":
        return {
            # onnxruntime execution provider inside the Python backend:
            #   auto = CUDA EP when onnxruntime-gpu is installed (GPU server), else CPU
            #   cpu | cuda | tensorrt force one; env AVEMO_ORT_PROVIDER overrides at serve time
            "execution_provider": "auto",
            # onnxruntime intra-op threads per instance; 0 = cpu_count // instance_count
            "intra_op_threads": "0",
            # |audio| beyond this is refused with INVALID_ARG (the graph itself clips to [-1, 1])
            "audio_abs_max": repr(AUDIO_REFUSE_ABOVE),
        }
    if flavour == "libtorch":
        return {"INFERENCE_MODE": "true"}  # no autograd bookkeeping at serve time
    return {}


def warmup_samples(spec: Spec) -> dict[str, np.ndarray]:
    """One realistic window per input, without batch dim (what ``warmup/<input>`` holds, row-major):
    a quiet chord for audio, a smooth grey gradient for frames, both modalities present. A feature model:
    smooth features of unit scale over the whole padded length, every modality present. A conversation model:
    a dialogue of ``WARMUP_UTTERANCES`` utterances, speakers taking turns."""
    if isinstance(spec, DialogueSignature):
        dialogue: dict[str, np.ndarray] = {}
        for m, name in zip(spec.modalities, spec.served):
            grid = np.arange(WARMUP_UTTERANCES)[:, None] * 0.3 + np.arange(spec.dims[m])[None, :] * 0.7
            dialogue[name] = np.sin(grid).astype(np.float32)  # [U, D]
        dialogue[SPEAKERS] = (np.arange(WARMUP_UTTERANCES) % spec.num_speakers).astype(np.int64)  # [U]
        dialogue[MODALITY_MASK] = np.ones((WARMUP_UTTERANCES, len(spec.modalities)), np.float32)  # [U, M]
        return dialogue
    if isinstance(spec, FeatureSignature):
        samples: dict[str, np.ndarray] = {}
        for m, name in zip(spec.modalities, spec.served):
            steps, dim = spec.seq_lens[m], spec.dims[m]
            grid = np.arange(steps)[:, None] * 0.3 + np.arange(dim)[None, :] * 0.7
            samples[name] = np.sin(grid).astype(np.float32)  # [L, D]
            samples[lengths_name(name)] = np.array([steps], np.int64)  # [1]
        samples[MODALITY_MASK] = np.ones(len(spec.modalities), np.float32)  # [M]
        return samples
    geometry = spec
    t = np.arange(geometry.window_samples, dtype=np.float64) / geometry.sample_rate
    audio = 0.1 * (np.sin(2 * math.pi * 220 * t) + 0.5 * np.sin(2 * math.pi * 330 * t))  # [S]
    size = geometry.face_size
    ramp = np.linspace(60, 200, size, dtype=np.float64)
    face = np.broadcast_to((ramp[:, None] + ramp[None, :]) / 2, (size, size))[..., None].repeat(3, -1)  # [H, W, 3]
    frames = np.broadcast_to(face, (geometry.frames_per_window, size, size, 3))  # [F, H, W, 3]
    return {
        AUDIO: audio.astype(np.float32),
        FRAMES: np.ascontiguousarray(frames.astype(np.uint8)),
        MODALITY_MASK: np.ones(2, dtype=np.float32),
    }


def _tensor_block(name: str, dtype: str, dims: Sequence[int | str], label_filename: str | None = None) -> str:
    lines = ["  {", f"    name: {pbtxt_str(name)}", f"    data_type: {TRITON_PBTXT_DTYPES[dtype]}"]
    lines.append(f"    dims: [ {', '.join(str(int(d)) for d in dims)} ]")
    if label_filename:
        lines.append(f"    label_filename: {pbtxt_str(label_filename)}")
    return "\n".join(lines + ["  }"])


def _warmup_blocks(spec: Spec, num_classes: int, max_batch_size: int) -> str:
    sizes = sorted({min(b, max_batch_size) for b in WARMUP_BATCH_SIZES})
    samples = warmup_samples(spec)  # the dims of each warm-up input are its sample's (no -1)
    blocks = []
    for b in sizes:
        inputs = "\n".join(
            f"  inputs {{\n    key: {pbtxt_str(s.name)}\n    value {{\n"
            f"      data_type: {TRITON_PBTXT_DTYPES[s.dtype]}\n"
            f"      dims: [ {', '.join(map(str, samples[s.name].shape))} ]\n"
            f"      input_data_file: {pbtxt_str(s.name)}\n    }}\n  }}"
            for s in io_specs(spec, num_classes)[0]
        )
        blocks.append(f"model_warmup {{\n  name: {pbtxt_str(f'window_batch{b}')}\n  batch_size: {b}\n{inputs}\n}}")
    return "\n".join(blocks)


def render_config_pbtxt(
    model_name: str,
    labels: Sequence[str],
    spec: Spec,
    *,
    flavour: str = "python",
    max_batch_size: int = MAX_BATCH_SIZE,
    preferred_batch_sizes: Sequence[int] = PREFERRED_BATCH_SIZES,
    max_queue_delay_us: int = MAX_QUEUE_DELAY_US,
    max_queue_size: int = MAX_QUEUE_SIZE,
    queue_timeout_us: int = QUEUE_TIMEOUT_US,
    instance_count: int = 1,
    device: str = "gpu",
    tensorrt: bool = False,
    version_policy: str = "latest:1",
    extra_parameters: Mapping[str, str] | None = None,
) -> str:
    """config.pbtxt text for one flavour (inputs/outputs from contract.tensors, or the feature signature)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {sorted(FLAVOURS)}")
    fl = FLAVOURS[flavour]
    labels = validate_labels(labels)
    validate_model_name(model_name)
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be >= 1 (the contract tensors are batch-first)")
    if instance_count < 1:
        raise ValueError("instance_count must be >= 1")
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if tensorrt and not (fl.key == "onnxruntime" and device == "gpu"):
        raise ValueError("the TensorRT accelerator applies to the onnxruntime flavour on a GPU (--device gpu)")
    dialogue = isinstance(spec, DialogueSignature)
    if dialogue:  # one request = one dialogue of any length: nothing to batch ([1, U, ...] of different U)
        max_batch_size, preferred_batch_sizes = 1, ()
    num_classes = len(labels)
    params = {**config_parameters(labels, spec, extra_parameters), **flavour_parameters(flavour, spec)}
    preferred = sorted({int(b) for b in preferred_batch_sizes if 1 <= int(b) <= max_batch_size})

    in_specs, out_specs = io_specs(spec, num_classes)
    inputs = ",\n".join(_tensor_block(s.name, s.dtype, s.dims) for s in in_specs)
    outputs = ",\n".join(
        _tensor_block(s.name, s.dtype, s.dims, LABELS_FILENAME if s.name == PROBS else None) for s in out_specs
    )
    batching = ["dynamic_batching {"]
    if preferred:
        batching.append(f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]")
    batching += [
        f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}",
        "  # load shedding (contract.endpoint): a full queue or a request that waited too long is refused at",
        "  # once (clients read either as busy and retry after a backoff), not run seconds late",
        "  default_queue_policy {",
        "    timeout_action: REJECT",
        f"    default_timeout_microseconds: {int(queue_timeout_us)}",
        "    allow_timeout_override: true  # a live client's per-request timeout: the rest of its lag budget",
        f"    max_queue_size: {int(max_queue_size)}",
        "  }",
        "}",
    ]
    if dialogue:
        batching = ["# one dialogue per request (max_batch_size 1, U variable): no dynamic batcher"]
    kind = "KIND_GPU" if fl.native and device == "gpu" else "KIND_CPU"
    note = {
        "python": "# KIND_CPU: the Python backend instance is a CPU process; on a GPU server onnxruntime inside it\n"
        "# still runs the graph on the CUDA execution provider (parameter execution_provider = auto).\n",
        "onnxruntime": "# Inputs and outputs are bound by name (the ONNX graph's names are the contract's).\n",
        "libtorch": "# TorchScript keeps no output names: inputs bind by forward()'s argument names (the contract's),\n"
        f"# outputs by their order here ({', '.join(s.name for s in out_specs)}), as the pytorch_libtorch backend "
        "documents.\n",
    }[flavour]
    optimization = ""
    if tensorrt:
        optimization = (
            "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [\n      {\n"
            '        name: "tensorrt"\n'
            '        parameters { key: "precision_mode" value: "FP16" }\n'
            '        parameters { key: "max_workspace_size_bytes" value: "1073741824" }\n'
            "      }\n    ]\n  }\n}\n"
        )
    param_blocks = "\n".join(
        f"parameters: {{\n  key: {pbtxt_str(k)}\n  value: {{ string_value: {pbtxt_str(v)} }}\n}}"
        for k, v in params.items()
    )
    return (
        f"# Generated by export/triton_config.py ({flavour} flavour) -- do not edit; re-run `avemo export`.\n"
        f"name: {pbtxt_str(model_name)}\n"
        f"backend: {pbtxt_str(fl.backend)}\n"
        f"max_batch_size: {int(max_batch_size)}\n"
        f"{parse_version_policy(version_policy)}\n"
        f"{note}"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n" + "\n".join(batching) + "\n"
        f"instance_group [\n  {{\n    count: {int(instance_count)}\n    kind: {kind}\n  }}\n]\n"
        f"{optimization}"
        f"{_warmup_blocks(spec, num_classes, max_batch_size)}\n"
        f"{param_blocks}\n"
    )
