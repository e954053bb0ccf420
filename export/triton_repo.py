"""The ONE Triton model repository writer (every flavour, every version).

Layout written for a model ``<name>`` of flavour ``python`` (see ``export.triton_config`` for the others)::

    <repo>/<name>/config.pbtxt          generated from the contract (+ geometry or feature-signature parameters)
    <repo>/<name>/labels.txt            one label per line (``label_filename`` of the probs output)
    <repo>/<name>/warmup/<input>        one sample window per input, raw row-major (``model_warmup``)
    <repo>/<name>/<version>/model.onnx  the exported graph (single self-contained file)
    <repo>/<name>/<version>/model.py    copy of serving/backend_model.py (runs the ONNX with onnxruntime)

Writing version N keeps the other version folders (the config's ``version_policy`` says which are
served; ``latest:1`` by default, so rolling back is ``--version-policy specific:1``). The model directory
is assembled in a temporary directory next to the repository and renamed into place, so a running
server never sees a half-written model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from avemo.contract.endpoint import MAX_QUEUE_SIZE, QUEUE_TIMEOUT_US
from avemo.export.triton_config import (
    FLAVOURS,
    LABELS_FILENAME,
    MAX_BATCH_SIZE,
    MAX_QUEUE_DELAY_US,
    PREFERRED_BATCH_SIZES,
    WARMUP_DIRNAME,
    Spec,
    io_specs,
    render_config_pbtxt,
    validate_labels,
    warmup_samples,
)

BACKEND_MODEL_SOURCE = Path(__file__).resolve().parents[1] / "serving" / "backend_model.py"
ONNX_FILENAME = FLAVOURS["python"].filename

__all__ = ["LABELS_FILENAME", "MAX_BATCH_SIZE", "ONNX_FILENAME", "write_model_repository", "version_folders"]


def check_onnx_file(onnx_path: Path, spec: Spec, num_classes: int) -> None:
    """Fail early on an ONNX file that would not serve: external data or wrong tensor names."""
    import onnx  # export dependency; the writer is only called by export

    model = onnx.load(str(onnx_path), load_external_data=False)
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise ValueError(
                f"{onnx_path} keeps weights in an external data file; save a single self-contained file "
                "(onnx.save(model, path, save_as_external_data=False))"
            )
    graph_inputs = {i.name for i in model.graph.input} - {i.name for i in model.graph.initializer}
    graph_outputs = {o.name for o in model.graph.output}
    want_in, want_out = io_specs(spec, num_classes)
    missing_in = [s.name for s in want_in if s.name not in graph_inputs]
    missing_out = [s.name for s in want_out if s.name not in graph_outputs]
    if missing_in or missing_out:
        raise ValueError(
            f"{onnx_path} does not follow the serving contract: missing inputs {missing_in}, missing outputs "
            f"{missing_out} (graph has inputs {sorted(graph_inputs)}, outputs {sorted(graph_outputs)})"
        )


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def version_folders(model_dir: Path) -> list[int]:
    """The numeric version folders of a model directory, ascending."""
    if not Path(model_dir).is_dir():
        return []
    return sorted(int(p.name) for p in Path(model_dir).iterdir() if p.is_dir() and p.name.isdigit())


def write_model_repository(
    repo_dir: Path,
    model_name: str,
    artefact_path: Path,
    labels: Sequence[str],
    spec: Spec,
    *,
    flavour: str = "python",
    version: int = 1,
    version_policy: str = "latest:1",
    max_batch_size: int = MAX_BATCH_SIZE,
    preferred_batch_sizes: Sequence[int] = PREFERRED_BATCH_SIZES,
    max_queue_delay_us: int = MAX_QUEUE_DELAY_US,
    max_queue_size: int = MAX_QUEUE_SIZE,
    queue_timeout_us: int = QUEUE_TIMEOUT_US,
    instance_count: int = 1,
    device: str = "gpu",
    tensorrt: bool = False,
    extra_parameters: Mapping[str, str] | None = None,
    extra_files: Sequence[Path] = (),
) -> Path:
    """Write (or replace) version ``version`` of ``<repo_dir>/<model_name>`` for one flavour; returns the
    model dir. ``artefact_path`` is the exported file the flavour serves (ONNX, or TorchScript for libtorch);
    ``extra_files`` are copied next to it (an export format no written flavour serves). ``spec`` is the clip
    model's window geometry or a feature model's signature (``contract.features``)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {sorted(FLAVOURS)}")
    fl = FLAVOURS[flavour]
    repo_dir, artefact_path = Path(repo_dir), Path(artefact_path)
    if not artefact_path.is_file():
        raise FileNotFoundError(f"{fl.artefact} model not found: {artefact_path}")
    if int(version) < 1:
        raise ValueError("version must be >= 1")
    if fl.artefact == "onnx":
        check_onnx_file(artefact_path, spec, len(labels))
    if flavour == "python" and not BACKEND_MODEL_SOURCE.is_file():
        raise FileNotFoundError(f"backend model source missing: {BACKEND_MODEL_SOURCE}")

    extra = dict(extra_parameters or {})
    extra.setdefault(f"{fl.artefact}_sha256", sha256(artefact_path))
    config = render_config_pbtxt(
        model_name,
        labels,
        spec,
        flavour=flavour,
        max_batch_size=max_batch_size,
        preferred_batch_sizes=preferred_batch_sizes,
        max_queue_delay_us=max_queue_delay_us,
        max_queue_size=max_queue_size,
        queue_timeout_us=queue_timeout_us,
        instance_count=instance_count,
        device=device,
        tensorrt=tensorrt,
        version_policy=version_policy,
        extra_parameters=extra,
    )

    repo_dir.mkdir(parents=True, exist_ok=True)
    model_dir = repo_dir / model_name
    # Assemble next to the repository (not inside it: Triton would try to load a stray directory).
    staging_parent = repo_dir.resolve().parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{repo_dir.name}-{model_name}.tmp-", dir=staging_parent))
    try:
        (tmp / "config.pbtxt").write_text(config)
        (tmp / LABELS_FILENAME).write_text("\n".join(validate_labels(labels)) + "\n")
        (tmp / WARMUP_DIRNAME).mkdir()
        for name, sample in warmup_samples(spec).items():
            (tmp / WARMUP_DIRNAME / name).write_bytes(sample.tobytes(order="C"))
        for kept in version_folders(model_dir):
            if kept != int(version):  # earlier (and later) versions stay; hard links cost no space
                shutil.copytree(model_dir / str(kept), tmp / str(kept), copy_function=_link_or_copy)
        vdir = tmp / str(int(version))
        vdir.mkdir()
        shutil.copyfile(artefact_path, vdir / fl.filename)
        for extra_file in extra_files:
            shutil.copyfile(extra_file, vdir / Path(extra_file).name)
        if flavour == "python":
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


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
