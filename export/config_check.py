"""Check a generated config.pbtxt with Triton's own schema and against the graph it serves.

CI cannot load the native flavours (the embedded server has only the Python backend), so each
config is parsed with Triton's ``ModelConfig`` protobuf (``tritonclient.grpc.model_config_pb2``: an
unknown field or a malformed value is an error here, as it would be in tritonserver) and its tensors
are matched to the exported file's: names, dtypes and dims (ONNX from the graph's declared types,
TorchScript from ``forward``'s argument names and one run), plus the files the config names
(labels, warm-up samples of the right byte size).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from avemo.contract.dialogues import SIGNATURES
from avemo.contract.tensors import NUMPY_DTYPES, PROBS, TRITON_PBTXT_DTYPES
from avemo.export.triton_config import FLAVOURS, LABELS_FILENAME, WARMUP_DIRNAME, Spec, io_specs

_ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 7: "TYPE_INT64"}  # onnx.TensorProto element types
_TORCH_TO_TRITON = {"torch.float32": "TYPE_FP32", "torch.uint8": "TYPE_UINT8", "torch.int64": "TYPE_INT64"}


class ConfigError(ValueError):
    """A config.pbtxt that Triton would refuse, or that does not match the graph it serves."""


def parse_config(text: str, where: str = "config.pbtxt") -> mc.ModelConfig:
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as e:
        raise ConfigError(f"{where} does not parse as Triton's ModelConfig: {e}") from e


def _dtype(t) -> str:
    return mc.DataType.Name(t.data_type)


def _io_table(tensors) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(t.name, _dtype(t), tuple(t.dims)) for t in tensors]


def _onnx_io(path: Path) -> tuple[list, list]:
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in g.initializer}

    def table(values):
        rows = []
        for v in values:
            if v.name in inits:
                continue
            tt = v.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
            rows.append((v.name, _ONNX_TO_TRITON.get(tt.elem_type, f"onnx:{tt.elem_type}"), dims[1:]))
        return rows

    return table(g.input), table(g.output)


def _torchscript_io(path: Path, spec: Spec, num_classes: int) -> tuple[list, list]:
    import torch

    from avemo.export.onnx_export import example_inputs
    from avemo.export.torchscript_export import forward_argument_names, load_torchscript

    module = load_torchscript(path)
    inputs = example_inputs(spec, 2, seed=3)
    outputs = io_specs(spec, num_classes)[1]
    with torch.no_grad():
        outs = module(*inputs)
    ins = [
        (n, _TORCH_TO_TRITON[str(x.dtype)], tuple(x.shape[1:])) for n, x in zip(forward_argument_names(module), inputs)
    ]
    # outputs have no names in TorchScript: the config's order is the binding, so compare position by position
    outs_rows = [
        (spec.name, _TORCH_TO_TRITON.get(str(y.dtype), str(y.dtype)), tuple(y.shape[1:]))
        for spec, y in zip(outputs, outs)
    ]
    if len(outs) != len(outputs):
        outs_rows.append(("<extra outputs>", f"{len(outs)} returned", ()))
    return ins, outs_rows


def _fit(concrete: tuple, pattern: tuple) -> tuple:
    """``concrete`` with -1 where ``pattern`` (config dims) has -1 and the ranks agree: a variable dim fits any size."""
    if len(concrete) != len(pattern):
        return tuple(concrete)
    return tuple(-1 if p == -1 else c for c, p in zip(concrete, pattern))


def check_model_dir(model_dir: Path, spec: Spec, version: int | None = None) -> mc.ModelConfig:
    """Parse ``model_dir/config.pbtxt`` and check it against the contract (the clip model's window geometry
    or a feature model's signature), the exported file of ``version`` (default: the newest folder) and the
    files it names; raises ConfigError listing every problem."""
    model_dir = Path(model_dir)
    cfg = parse_config((model_dir / "config.pbtxt").read_text(), str(model_dir / "config.pbtxt"))
    problems: list[str] = []
    flavour = next((f for f in FLAVOURS.values() if f.backend == cfg.backend), None)
    if flavour is None:
        raise ConfigError(f"{model_dir}: backend {cfg.backend!r} is none of {[f.backend for f in FLAVOURS.values()]}")
    if cfg.name != model_dir.name:
        problems.append(f"name {cfg.name!r} differs from the folder {model_dir.name!r} (Triton refuses that)")
    if cfg.max_batch_size < 1:
        problems.append(f"max_batch_size {cfg.max_batch_size}: the contract tensors are batch-first")
    labels = (
        [x for x in (model_dir / LABELS_FILENAME).read_text().splitlines() if x]
        if (model_dir / LABELS_FILENAME).is_file()
        else []
    )
    num_classes = len(labels)
    if not labels:
        problems.append(f"{LABELS_FILENAME} is missing or empty")

    specs_in, specs_out = io_specs(spec, num_classes)
    want_in = [(s.name, TRITON_PBTXT_DTYPES[s.dtype], tuple(s.dims)) for s in specs_in]
    want_out = [(s.name, TRITON_PBTXT_DTYPES[s.dtype], tuple(s.dims)) for s in specs_out]
    if _io_table(cfg.input) != want_in:
        problems.append(f"inputs {_io_table(cfg.input)} differ from the contract {want_in}")
    if _io_table(cfg.output) != want_out:
        problems.append(f"outputs {_io_table(cfg.output)} differ from the contract {want_out}")
    label_files = [o.label_filename for o in cfg.output if o.label_filename]
    want_files = [LABELS_FILENAME] if any(s.name == PROBS for s in specs_out) else []
    if label_files != want_files:
        problems.append(f"label_filename {label_files}, expected {want_files} (on probs; none for a prediction)")
    if isinstance(spec, SIGNATURES):
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        try:
            served = type(spec).from_parameters(params)
        except ValueError as e:
            problems.append(f"feature parameters: {e}")
        else:
            if served != spec:
                problems.append(f"the config's feature parameters describe {served}, the export is {spec}")
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    if params.get("labels", "").split(",") != labels:
        problems.append(f"parameter labels {params.get('labels')!r} differs from {LABELS_FILENAME} {labels}")

    for w in cfg.model_warmup:
        if not 1 <= w.batch_size <= cfg.max_batch_size:
            problems.append(f"warm-up {w.name!r}: batch_size {w.batch_size} outside 1..{cfg.max_batch_size}")
        got = {k: (mc.DataType.Name(v.data_type), _fit(tuple(v.dims), dims)) for k, v in w.inputs.items()
               for n, _, dims in want_in if n == k}  # fmt: skip
        if len(got) != len(w.inputs) or got != {n: (d, dims) for n, d, dims in want_in}:
            problems.append(f"warm-up {w.name!r}: inputs {got} differ from the config's inputs")
        for v in w.inputs.values():
            f = model_dir / WARMUP_DIRNAME / v.input_data_file
            dtype = NUMPY_DTYPES.get(mc.DataType.Name(v.data_type).removeprefix("TYPE_"))
            size = int(np.prod(v.dims)) * (dtype.itemsize if dtype is not None else 0)
            if not f.is_file() or f.stat().st_size != size:
                problems.append(f"warm-up {w.name!r}: {f} missing or not {size} bytes")

    kinds = {mc.ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group}
    if not flavour.native and kinds != {"KIND_CPU"}:
        problems.append(f"the Python backend runs as KIND_CPU instances, config has {sorted(kinds)}")

    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    v = version if version is not None else (versions[-1] if versions else None)
    artefact = model_dir / str(v) / flavour.filename
    if v is None or not artefact.is_file():
        problems.append(f"no {flavour.filename} in version folder {v} (versions {versions})")
    else:
        graph_in, graph_out = (
            _onnx_io(artefact) if flavour.artefact == "onnx" else _torchscript_io(artefact, spec, num_classes)
        )
        cfg_in, cfg_out = _io_table(cfg.input), _io_table(cfg.output)
        # a traced TorchScript run has concrete sizes where the config says -1 (a dialogue's utterances)
        graph_in = [(n, d, _fit(g, dict((c[0], c[2]) for c in cfg_in).get(n, g))) for n, d, g in graph_in]
        graph_out = [(n, d, _fit(g, dict((c[0], c[2]) for c in cfg_out).get(n, g))) for n, d, g in graph_out]
        if flavour.artefact == "onnx":  # ONNX flavours bind tensors by name: order is free
            graph_in, graph_out, cfg_in, cfg_out = sorted(graph_in), sorted(graph_out), sorted(cfg_in), sorted(cfg_out)
        if graph_in != cfg_in:
            problems.append(f"{artefact.name} inputs {graph_in} do not match config.pbtxt {cfg_in}")
        if graph_out != cfg_out:
            problems.append(f"{artefact.name} outputs {graph_out} do not match config.pbtxt {cfg_out}")
    if problems:
        raise ConfigError(f"{model_dir}:\n  - " + "\n  - ".join(problems))
    return cfg
