"""Triton Python-backend model: runs the exported ONNX graph with onnxruntime.

Copied by export/triton_repo.py to ``<repo>/<model>/<version>/model.py``; it runs inside Triton's
Python backend stub, so it is self-contained: numpy, onnxruntime and triton_python_backend_utils only
(never torch, never this project's packages -- the production container does not have them).

Per ``execute`` call: every request is validated (inputs present, dtype, shape [batch, *dims], finite
FP32 values; a clip model's audio PCM within +-``audio_abs_max`` of the config: PCM belongs in [-1, 1],
and an unchecked 1e19 sample comes back as NaN probabilities; a feature model's ``<x>_lengths`` within
0..L of its input x, and with ``refuse_empty_mask``, at least one modality present); invalid requests
get an INVALID_ARG error response naming the input and the expected value; the valid ones are
concatenated (grouped by shape) and run in ONE onnxruntime call per group (a lone request's arrays are
passed as they are, no copy), then split back per request (views of the batch output, no copy). An
onnxruntime failure becomes an error response for the requests of that group; the model keeps serving.
"""

from __future__ import annotations

import json
import os
from typing import overload

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

_NP_TO_TRITON = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.object_): "BYTES",
}
_TRITON_TO_NP = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


def _triton_dtype_name(arr: np.ndarray) -> str:
    return _NP_TO_TRITON.get(arr.dtype, str(arr.dtype))


def _log(level: str, msg: str) -> None:
    logger = getattr(pb_utils, "Logger", None)
    fn = getattr(logger, f"log_{level}", None) if logger is not None else None
    if fn is not None:
        try:
            fn(msg)
            return
        except Exception:  # pragma: no cover - logger unavailable in this stub
            pass
    print(f"[avemo backend] {level.upper()}: {msg}", flush=True)


def _error(msg: str, code_name: str = "INVALID_ARG"):
    """A TritonError with a status code when this Triton version supports codes."""
    err_cls = pb_utils.TritonError
    code = getattr(err_cls, code_name, None)
    if code is not None:
        try:
            return err_cls(msg, code)
        except TypeError:  # older stubs: TritonError(message) only
            pass
    return err_cls(msg)


def _error_response(msg: str, code_name: str = "INVALID_ARG"):
    return pb_utils.InferenceResponse(output_tensors=[], error=_error(msg, code_name))


@overload
def _param(config: dict, key: str, default: str) -> str: ...
@overload
def _param(config: dict, key: str, default: None = None) -> str | None: ...
def _param(config: dict, key: str, default: str | None = None) -> str | None:
    value = (config.get("parameters") or {}).get(key)
    if isinstance(value, dict):
        value = value.get("string_value")
    return default if value in (None, "") else str(value)


class TritonPythonModel:
    """One instance per Triton model instance (see instance_group in config.pbtxt)."""

    def initialize(self, args):
        self.model_config = config = json.loads(args["model_config"])
        self.model_name = args.get("model_name", config.get("name", "?"))
        model_dir = args["model_repository"]
        version = str(args.get("model_version", "1"))
        onnx_file = _param(config, "onnx_filename", "model.onnx")
        onnx_path = os.path.join(model_dir, version, onnx_file)
        if not os.path.isfile(onnx_path):
            raise pb_utils.TritonModelException(f"ONNX model not found: {onnx_path}")

        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.inputs = []  # (name, triton dtype, dims without batch)
        for inp in config.get("input", []):
            dtype = str(inp["data_type"]).replace("TYPE_", "")
            dims = tuple(int(d) for d in inp.get("dims", []))
            self.inputs.append((inp["name"], dtype, dims))
        self.outputs = []  # (name, numpy dtype)
        for out in config.get("output", []):
            dtype = str(out["data_type"]).replace("TYPE_", "")
            self.outputs.append((out["name"], _TRITON_TO_NP.get(dtype, np.float32)))
        self.hints = self._shape_hints(config)
        # clip models: PCM audio beyond this is refused (feature models' "audio" is features: no such limit)
        abs_max = _param(config, "audio_abs_max")
        self.audio_abs_max = float(abs_max) if abs_max is not None else None
        # feature models: "<x>_lengths" is the valid steps of input x, 0..L (L = x's first dim)
        steps = {n: dims[0] for n, _, dims in self.inputs if len(dims) == 2}
        self.lengths_of = {
            n: (n[: -len("_lengths")], steps[n[: -len("_lengths")]])
            for n, _, _ in self.inputs
            if n.endswith("_lengths") and n[: -len("_lengths")] in steps
        }
        self.refuse_empty_mask = _param(config, "refuse_empty_mask", "false") == "true"
        # conversation models: one dialogue per request; every input has the same utterances, speakers 0..S-1
        self.dialogue = _param(config, "kind") == "dialogue"
        self.num_speakers = int(_param(config, "num_speakers", "0") or 0)

        # ---- onnxruntime session
        instance_kind = str(args.get("model_instance_kind", "CPU")).upper()
        device_id = int(args.get("model_instance_device_id", 0) or 0)
        requested = (os.environ.get("AVEMO_ORT_PROVIDER") or _param(config, "execution_provider", "auto")).lower()
        providers = self._providers(requested, instance_kind, device_id)

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = int(_param(config, "intra_op_threads", "0") or 0)
        if threads <= 0:
            count = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
            threads = max(1, (os.cpu_count() or 1) // count)
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_path, sess_options=opts, providers=providers)

        onnx_inputs = {i.name for i in self.session.get_inputs()}
        onnx_outputs = {o.name for o in self.session.get_outputs()}
        missing = [n for n, _, _ in self.inputs if n not in onnx_inputs]
        missing += [n for n, _ in self.outputs if n not in onnx_outputs]
        if missing:
            raise pb_utils.TritonModelException(
                f"{onnx_path} lacks tensors named in config.pbtxt: {missing} "
                f"(graph inputs {sorted(onnx_inputs)}, outputs {sorted(onnx_outputs)})"
            )
        self.output_names = [n for n, _ in self.outputs]
        _log(
            "info",
            f"model '{self.model_name}' v{version}: {onnx_path} on {self.session.get_providers()} "
            f"(instance kind {instance_kind}, intra-op threads {threads})",
        )

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _providers(requested: str, instance_kind: str, device_id: int) -> list:
        available = set(ort.get_available_providers())
        cuda = ("CUDAExecutionProvider", {"device_id": device_id})
        trt = ("TensorrtExecutionProvider", {"device_id": device_id})
        cpu = "CPUExecutionProvider"
        if requested == "cpu":
            return [cpu]
        if requested in ("tensorrt", "trt"):
            chosen = [p for p in (trt, cuda) if p[0] in available]
            if not chosen:
                _log("warn", f"TensorRT/CUDA execution providers not available ({sorted(available)}); using CPU")
            return chosen + [cpu]
        if requested == "cuda" or requested == "auto" or instance_kind == "GPU":
            if cuda[0] in available:
                return [cuda, cpu]
            if requested == "cuda" or instance_kind == "GPU":
                _log("warn", f"CUDAExecutionProvider not available ({sorted(available)}); using CPU")
        return [cpu]

    @staticmethod
    def _shape_hints(config: dict) -> dict:
        """Human explanations of the expected dims, from the geometry (clip) or feature parameters."""
        if _param(config, "kind") == "dialogue":
            pairs = [p.partition(":") for p in (_param(config, "feature_dims", "") or "").split(",")]
            hints = {name: f"[1, U, D]: one row per utterance, D = {dim}" for name, _, dim in pairs if name}
            hints["speakers"] = (
                f"[1, U]: the speaker of each utterance, 0..{int(_param(config, 'num_speakers', '1')) - 1}"
            )
            hints["modality_mask"] = f"[1, U, M]: ({_param(config, 'modalities', '')}) per utterance, 1 = present"
            return hints
        if _param(config, "kind") == "features":
            modalities = _param(config, "modalities", "")
            hints = {}
            for pair in (_param(config, "feature_dims", "") or "").split(","):
                name, _, dim = pair.partition(":")
                if name:
                    hints[name] = f"L = padded steps, D = {dim} features per step of the trained {name} features"
                    hints[f"{name}_lengths"] = f"valid steps of '{name}'"
            hints["modality_mask"] = f"({modalities}) presence flags, 1 = present"
            return hints
        sr = _param(config, "sample_rate")
        fps = _param(config, "video_fps")
        win = _param(config, "window_seconds")
        size = _param(config, "face_size")
        hints = {}
        if sr and win:
            hints["audio"] = f"S = window samples for {float(win):g} s at {int(sr)} Hz"
        if fps and win:
            face = f", {size}x{size} RGB face crops" if size else ""
            hints["frames"] = f"F = frames per window for {float(win):g} s at {int(fps)} fps{face}"
        hints["modality_mask"] = "(audio, video) presence flags, 1 = present"
        return hints

    def _expected(self, dims) -> str:
        return "[" + ", ".join(str(d) for d in ((-1,) + tuple(dims) if self.max_batch_size > 0 else dims)) + "]"

    def _validate(self, request):
        """(arrays by name, batch size) or raises ValueError with a message for the client."""
        arrays = {}
        batch = None
        utterances = None  # (input name, U) of a dialogue's first input
        for name, dtype, dims in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(
                    f"missing input '{name}' (expected {dtype} {self._expected(dims)}); "
                    f"required inputs: {[n for n, _, _ in self.inputs]}"
                )
            arr = tensor.as_numpy()
            got = _triton_dtype_name(arr)
            if got != dtype:
                raise ValueError(f"input '{name}' has dtype {got}, expected {dtype}")
            want_rank = len(dims) + (1 if self.max_batch_size > 0 else 0)
            shape = list(arr.shape)
            ok = len(shape) == want_rank
            if ok:
                tail = shape[1:] if self.max_batch_size > 0 else shape
                ok = all(d == -1 or d == s for d, s in zip(dims, tail))
            if ok and self.max_batch_size > 0:
                ok = 1 <= shape[0] <= self.max_batch_size
            if not ok:
                hint = self.hints.get(name)
                raise ValueError(
                    f"input '{name}' has shape {shape}, expected {self._expected(dims)}"
                    + (f" ({hint})" if hint else "")
                    + (f", batch 1..{self.max_batch_size}" if self.max_batch_size > 0 else "")
                )
            if self.max_batch_size > 0:
                if batch is None:
                    batch = shape[0]
                elif shape[0] != batch:
                    raise ValueError(
                        f"input '{name}' has batch size {shape[0]}, but the other inputs have batch size {batch}"
                    )
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                bad = int(arr.size - np.isfinite(arr).sum())
                raise ValueError(f"input '{name}' contains {bad} non-finite values (NaN or Inf)")
            if name in self.lengths_of and arr.size:
                of, steps = self.lengths_of[name]
                low, high = int(arr.min()), int(arr.max())
                if low < 0 or high > steps:
                    raise ValueError(
                        f"input '{name}' has {high if high > steps else low} steps, beyond the padding of '{of}': "
                        f"valid lengths are 0..{steps} (L = {steps} padded steps in the served config)"
                    )
            if self.dialogue and arr.ndim >= 2:
                if utterances is None:
                    utterances = (name, arr.shape[1])
                elif arr.shape[1] != utterances[1]:
                    raise ValueError(
                        f"input '{name}' has {arr.shape[1]} utterances, but '{utterances[0]}' has {utterances[1]}: "
                        "every input of a dialogue gives one row per utterance"
                    )
            if name == "speakers" and self.num_speakers and arr.size:
                low, high = int(arr.min()), int(arr.max())
                if low < 0 or high >= self.num_speakers:
                    raise ValueError(
                        f"input 'speakers' has speaker {high if high >= self.num_speakers else low}; the model knows "
                        f"speakers 0..{self.num_speakers - 1}"
                    )
            if name == "modality_mask" and self.refuse_empty_mask and arr.size:
                rows = arr.reshape(-1, arr.shape[-1])  # [B, M], or [U, M] for a dialogue
                empty = np.flatnonzero((rows > 0).sum(axis=-1) == 0)
                if empty.size:
                    what = "utterance" if self.dialogue else "row"
                    raise ValueError(
                        f"input 'modality_mask' {what} {int(empty[0])} has no modality present "
                        f"({rows[empty[0]].tolist()}); "
                        "at least one entry must be 1 (a missing modality is zeros with mask 0)"
                    )
            if name == "audio" and arr.size and self.audio_abs_max is not None:
                peak = float(np.abs(arr).max())
                if peak > self.audio_abs_max:
                    raise ValueError(
                        f"input 'audio' has a sample of magnitude {peak:.3g}; PCM audio belongs in [-1, 1] "
                        f"(refused beyond +-{self.audio_abs_max:g}; int16 PCM must be divided by 32768)"
                    )
            arrays[name] = arr
        return arrays, (batch if batch is not None else 1)

    @staticmethod
    def _request_tag(request) -> str:
        try:
            rid = request.request_id()
        except Exception:
            rid = ""
        return f"[request_id={rid}] " if rid else ""

    # ------------------------------------------------------------------ Triton API

    def execute(self, requests):
        responses = [None] * len(requests)
        groups: dict[tuple, list[tuple]] = {}  # shape signature -> [(request index, arrays, batch)]
        for i, request in enumerate(requests):
            try:
                arrays, batch = self._validate(request)
            except ValueError as exc:
                responses[i] = _error_response(f"{self._request_tag(request)}{exc}", "INVALID_ARG")
                continue
            except Exception as exc:  # never let one request kill the batch
                responses[i] = _error_response(f"{self._request_tag(request)}bad request: {exc}", "INTERNAL")
                continue
            key = tuple(arrays[n].shape[1:] for n, _, _ in self.inputs)
            if self.max_batch_size <= 1:  # a graph of batch 1 (one dialogue per request): never concatenate
                key = (i, key)
            groups.setdefault(key, []).append((i, arrays, batch))

        for members in groups.values():
            names = [n for n, _, _ in self.inputs]
            try:
                if len(members) == 1:
                    feed = {n: members[0][1][n] for n in names}
                else:
                    feed = {n: np.concatenate([m[1][n] for m in members], axis=0) for n in names}
                outs = self.session.run(self.output_names, feed)
                total = sum(m[2] for m in members)
                for name, out in zip(self.output_names, outs):
                    if out.shape[0] != total:
                        raise RuntimeError(f"output '{name}' has batch {out.shape[0]}, expected {total}")
            except Exception as exc:
                for i, _, _ in members:
                    responses[i] = _error_response(
                        f"{self._request_tag(requests[i])}onnxruntime failed on a batch of "
                        f"{len(members)} request(s): {exc}",
                        "INTERNAL",
                    )
                continue
            offset = 0
            for i, _, batch in members:
                tensors = [
                    pb_utils.Tensor(
                        name, np.ascontiguousarray(out[offset : offset + batch].astype(np_dtype, copy=False))
                    )
                    for (name, np_dtype), out in zip(self.outputs, outs)
                ]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                offset += batch
        return responses

    def finalize(self):
        self.session = None
        _log("info", f"model '{getattr(self, 'model_name', '?')}' finalized")
