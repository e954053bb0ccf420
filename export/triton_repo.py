"""The ONE Triton model repository writer.

Layout written for a model ``<model>`` (``contract.endpoint.MODEL_NAME`` by default), version 1::

    <repo>/<model>/config.pbtxt      backend "python", tensors generated from contract.tensors
    <repo>/<model>/labels.txt        one label per line (``label_filename`` of the probs output)
    <repo>/<model>/1/model.onnx      the exported graph (single self-contained file)
    <repo>/<model>/1/model.py        copy of serving/backend_model.py (runs the ONNX with onnxruntime)

The served config is the contract the client reads: window geometry and labels travel as config
``parameters``; window dims are the input dims. The model directory is assembled in a temporary
directory next to the repository and then renamed into place, so a running server never sees a
half-written model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from avemo.contract.geometry import WindowGeometry
from avemo.contract.tensors import INPUTS, OUTPUTS, PROBS, TRITON_PBTXT_DTYPES, TensorSpec, resolve_dims

BACKEND_MODEL_SOURCE = Path(__file__).resolve().parents[1] / "serving" / "backend_model.py"
LABELS_FILENAME = "labels.txt"
ONNX_FILENAME = "model.onnx"

# batching defaults of config.pbtxt
MAX_BATCH_SIZE = 32
PREFERRED_BATCH_SIZES = (4, 8, 16)
MAX_QUEUE_DELAY_US = 2000

# parameters the writer owns; extra_parameters may not override them
GEOMETRY_PARAMETER_KEYS = ("sample_rate", "video_fps", "face_size", "window_seconds", "hop_seconds")


def _pbtxt_str(value: str) -> str:
    """A quoted protobuf text-format string."""
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _fmt_float(x: float) -> str:
    return repr(float(x))


def _tensor_block(spec: TensorSpec, dims: tuple[int, ...], label_filename: str | None = None) -> str:
    lines = [
        "  {",
        f"    name: {_pbtxt_str(spec.name)}",
        f"    data_type: {TRITON_PBTXT_DTYPES[spec.dtype]}",
        f"    dims: [ {', '.join(str(int(d)) for d in dims)} ]",
    ]
    if label_filename:
        lines.append(f"    label_filename: {_pbtxt_str(label_filename)}")
    lines.append("  }")
    return "\n".join(lines)


def _validate_labels(labels: Sequence[str]) -> list[str]:
    labels = [str(x) for x in labels]
    if not labels:
        raise ValueError("labels must not be empty")
    for lab in labels:
        if not lab or lab != lab.strip() or "," in lab or "\n" in lab:
            raise ValueError(f"invalid label {lab!r}: labels must be non-empty, unpadded and contain no ',' or newline")
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate labels: {labels}")
    return labels


def config_parameters(
    labels: Sequence[str], geometry: WindowGeometry, extra_parameters: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The string parameters stored in config.pbtxt (what the client reads back over gRPC)."""
    labels = _validate_labels(labels)
    params: dict[str, str] = {
        "sample_rate": str(int(geometry.sample_rate)),
        "video_fps": str(int(geometry.video_fps)),
        "face_size": str(int(geometry.face_size)),
        "window_seconds": _fmt_float(geometry.window_seconds),
        "hop_seconds": _fmt_float(geometry.hop_seconds),
        "window_samples": str(geometry.window_samples),
        "frames_per_window": str(geometry.frames_per_window),
        "labels": ",".join(labels),
        "num_classes": str(len(labels)),
        # onnxruntime execution provider inside the Python backend:
        #   auto = CUDA EP when onnxruntime-gpu is installed (GPU server), else CPU
        #   cpu | cuda | tensorrt force one; env AVEMO_ORT_PROVIDER overrides at serve time
        "execution_provider": "auto",
        # onnxruntime intra-op threads per instance; 0 = cpu_count // instance_count
        "intra_op_threads": "0",
    }
    for k, v in (extra_parameters or {}).items():
        k = str(k)
        if k in GEOMETRY_PARAMETER_KEYS or k in ("labels", "num_classes", "window_samples", "frames_per_window"):
            raise ValueError(f"extra parameter {k!r} would override a parameter written from the geometry/labels")
        params[k] = str(v)
    return params


def render_config_pbtxt(
    model_name: str,
    labels: Sequence[str],
    geometry: WindowGeometry,
    *,
    max_batch_size: int = MAX_BATCH_SIZE,
    preferred_batch_sizes: Sequence[int] = PREFERRED_BATCH_SIZES,
    max_queue_delay_us: int = MAX_QUEUE_DELAY_US,
    instance_count: int = 1,
    extra_parameters: Mapping[str, str] | None = None,
) -> str:
    """config.pbtxt text for the Python-backend model (inputs/outputs from contract.tensors)."""
    labels = _validate_labels(labels)
    if not model_name or any(c in model_name for c in "/\\ \n\t") or model_name.startswith("."):
        raise ValueError(f"invalid model name {model_name!r}")
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be >= 1 (the contract tensors are batch-first)")
    if instance_count < 1:
        raise ValueError("instance_count must be >= 1")
    preferred = sorted({int(b) for b in preferred_batch_sizes if 1 <= int(b) <= max_batch_size})
    num_classes = len(labels)
    params = config_parameters(labels, geometry, extra_parameters)

    inputs = ",\n".join(_tensor_block(s, resolve_dims(s, geometry, num_classes)) for s in INPUTS)
    outputs = ",\n".join(
        _tensor_block(s, resolve_dims(s, geometry, num_classes), LABELS_FILENAME if s.name == PROBS else None)
        for s in OUTPUTS
    )
    batching = ["dynamic_batching {"]
    if preferred:
        batching.append(f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]")
    batching.append(f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}")
    batching.append("}")
    param_blocks = "\n".join(
        f"parameters: {{\n  key: {_pbtxt_str(k)}\n  value: {{ string_value: {_pbtxt_str(v)} }}\n}}"
        for k, v in params.items()
    )
    return (
        f"# Generated by export/triton_repo.py -- do not edit; re-run `avemo export`.\n"
        f"name: {_pbtxt_str(model_name)}\n"
        f'backend: "python"\n'
        f"max_batch_size: {int(max_batch_size)}\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n" + "\n".join(batching) + "\n"
        "# KIND_CPU: the Python backend instance is a CPU process; on a GPU server onnxruntime inside it\n"
        "# still runs the graph on the CUDA execution provider (parameter execution_provider = auto).\n"
        f"instance_group [\n  {{\n    count: {int(instance_count)}\n    kind: KIND_CPU\n  }}\n]\n"
        f"{param_blocks}\n"
    )


def _check_onnx(onnx_path: Path) -> None:
    """Fail early on an ONNX file that would not serve: external data or wrong tensor names."""
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is an export dependency
        return
    model = onnx.load(str(onnx_path), load_external_data=False)
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise ValueError(
                f"{onnx_path} keeps weights in an external data file; save a single self-contained file "
                "(onnx.save(model, path, save_as_external_data=False))"
            )
    graph_inputs = {i.name for i in model.graph.input} - {i.name for i in model.graph.initializer}
    graph_outputs = {o.name for o in model.graph.output}
    missing_in = [s.name for s in INPUTS if s.name not in graph_inputs]
    missing_out = [s.name for s in OUTPUTS if s.name not in graph_outputs]
    if missing_in or missing_out:
        raise ValueError(
            f"{onnx_path} does not follow the serving contract: missing inputs {missing_in}, missing outputs "
            f"{missing_out} (graph has inputs {sorted(graph_inputs)}, outputs {sorted(graph_outputs)})"
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_model_repository(
    repo_dir: Path,
    model_name: str,
    onnx_path: Path,
    labels: Sequence[str],
    geometry: WindowGeometry,
    *,
    version: int = 1,
    max_batch_size: int = MAX_BATCH_SIZE,
    preferred_batch_sizes: Sequence[int] = PREFERRED_BATCH_SIZES,
    max_queue_delay_us: int = MAX_QUEUE_DELAY_US,
    instance_count: int = 1,
    extra_parameters: dict[str, str] | None = None,
) -> Path:
    """Write (or replace) ``<repo_dir>/<model_name>`` for the Python backend; returns the model dir."""
    repo_dir = Path(repo_dir)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    if int(version) < 1:
        raise ValueError("version must be >= 1")
    if not BACKEND_MODEL_SOURCE.is_file():
        raise FileNotFoundError(f"backend model source missing: {BACKEND_MODEL_SOURCE}")
    _check_onnx(onnx_path)

    extra = dict(extra_parameters or {})
    extra.setdefault("onnx_sha256", _sha256(onnx_path))
    config = render_config_pbtxt(
        model_name,
        labels,
        geometry,
        max_batch_size=max_batch_size,
        preferred_batch_sizes=preferred_batch_sizes,
        max_queue_delay_us=max_queue_delay_us,
        instance_count=instance_count,
        extra_parameters=extra,
    )

    repo_dir.mkdir(parents=True, exist_ok=True)
    model_dir = repo_dir / model_name
    # Assemble next to the repository (not inside it: Triton would try to load a stray directory).
    staging_parent = repo_dir.resolve().parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{repo_dir.name}-{model_name}.tmp-", dir=staging_parent))
    try:
        (tmp / "config.pbtxt").write_text(config)
        (tmp / LABELS_FILENAME).write_text("\n".join(_validate_labels(labels)) + "\n")
        vdir = tmp / str(int(version))
        vdir.mkdir()
        shutil.copyfile(onnx_path, vdir / ONNX_FILENAME)
        shutil.copyfile(BACKEND_MODEL_SOURCE, vdir / "model.py")
        os.chmod(tmp, 0o755)
        old = None
        if model_dir.exists() or model_dir.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{repo_dir.name}-{model_name}.old-", dir=staging_parent))
            old.rmdir()
            os.rename(model_dir, old)
        os.rename(tmp, model_dir)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model_dir
