"""The feature-model part of ``benchmarks/serving.py`` (text / audio / vision feature sequences, ``contract.features``).

``serving.py`` measures whichever model a checkpoint holds; for an utterance-level feature checkpoint
(``model_config.input_dims`` set, no ``num_speakers``) it takes from here:

- what the checkpoint is (``checkpoint_kind``) and which repository models are its flavours (``own_models``:
  ``<dataset>``, ``<dataset>_onnx``, ``<dataset>_libtorch``);
- the eager export wrapper and its signature (``feature_wrapper``), measured in process exactly as the clip
  model's ``ExportWrapper`` (inputs: ``example_inputs(signature, batch, seed)``);
- the Triton part (``measure_triton_features``): a closed loop per concurrency, one sample per request
  (``run_feature_concurrency``), each with the server's split per request from ``get_inference_statistics``;
- the issue's two ratios for feature models (``feature_ratios``).

One MOSEI sample is text [1, 50, 768] + audio [1, 500, 74] + vision [1, 375, 35] FP32 (about 354 KB) with
lengths [1, 1] INT64 per modality and modality_mask [1, 3] FP32. Streams (step 3) do not apply: a feature
model answers whole utterances, it has no windows nor a hop to pace them at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from avemo.client.loadgen import ConcurrencyResult, closed_loop
from avemo.contract.endpoint import CLIENT_TIMEOUT, MODEL_NAME

DEFAULT_CONCURRENCY = "1,8,16"
# targets of the feature-serving issue
TARGET_OVERHEAD_MS = 3.0  # Triton gRPC p50 at c=1 - in-process onnxruntime p50 at batch 1, ms: at most
TARGET_THROUGHPUT = 0.5  # Triton samples/s at c=8 / in-process onnxruntime samples/s at batch 8: at least
STREAMS_SKIPPED = (
    "streams are the clip model's path: a feature model answers whole utterances, it has no windows nor a hop"
)


def checkpoint_kind(path) -> tuple[str, str]:
    """("features", served name) for an utterance-level feature checkpoint (the served name is its dataset,
    e.g. ``mosei``), ("clip", ``emotion``) for the clip model. ValueError for a conversation model."""
    from avemo.export.pipeline import default_model_name
    from avemo.training.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    cfg = ckpt["model_config"]
    if cfg.get("num_speakers"):
        raise ValueError(
            f"{path} is a conversation model (one dialogue per request): this benchmark measures clip and "
            "utterance-level feature models"
        )
    if cfg.get("input_dims"):
        return "features", default_model_name(ckpt)
    return "clip", MODEL_NAME


def own_models(repo_models: list, base: str) -> list:
    """The repository models (``RepoModel``) that serve the feature model ``base``: its flavours by name,
    and only those whose config says ``kind: features``."""
    from avemo.export.triton_config import FLAVOURS, flavour_model_name

    names = {flavour_model_name(base, f) for f in FLAVOURS}
    return [m for m in repo_models if m.name in names and m.served_kind == "features"]


def feature_wrapper(ckpt: dict):
    """(signature, eager export wrapper in eval mode) of a feature checkpoint: ``wrapper(*example_inputs(sig,
    B, seed))`` -> prediction [B, 1] (or probs [B, C]) and modality_weights [B, M]."""
    from avemo.training.models.checkpoint import model_from_checkpoint
    from avemo.training.models.feature_export import feature_export_wrapper, feature_signature_of

    sig = feature_signature_of(ckpt)
    return sig, feature_export_wrapper(model_from_checkpoint(ckpt)[0], sig).eval()


def describe(params: dict[str, str]) -> str:
    """``mosei regression: text [50, 768], audio [500, 74], vision [375, 35]`` from a signature's ``parameters()``."""
    from avemo.contract.features import FeatureSignature

    sig = FeatureSignature.from_parameters(params)
    shapes = ", ".join(f"{s} [{sig.seq_lens[m]}, {sig.dims[m]}]" for m, s in zip(sig.modalities, sig.served))
    return f"{sig.dataset or 'features'} {sig.task}: {shapes}"


# ------------------------------------------------------------------------------------ load generator


@dataclass
class FeatureSample:
    """One request's tensors: ``features`` model modality -> FP32 [1, L_m, D_m] (zero after the valid steps),
    ``lengths`` INT64 [1, M] (valid steps, mask order), ``mask`` FP32 [1, M] (at least one modality present)."""

    features: dict[str, np.ndarray]
    lengths: np.ndarray
    mask: np.ndarray


def feature_samples(sig, n: int = 8, seed: int = 0) -> list[FeatureSample]:
    """``n`` samples for ``sig`` (a ``FeatureSignature``): the rows of ``example_inputs(sig, n, seed)`` as numpy
    (the full length, one step, random lengths in between; row 1 lacks a modality). Imports torch."""
    from avemo.export.onnx_export import example_inputs

    arrays = [t.numpy() for t in example_inputs(sig, n, seed)]  # per modality [n, L, D], [n, 1]; then mask [n, M]
    m = len(sig.modalities)
    lengths = np.concatenate([arrays[2 * i + 1] for i in range(m)], axis=1).astype(np.int64)  # [n, M]
    mask = arrays[2 * m].astype(np.float32)  # [n, M]
    return [
        FeatureSample(
            {mod: np.ascontiguousarray(arrays[2 * i][k : k + 1], np.float32) for i, mod in enumerate(sig.modalities)},
            np.ascontiguousarray(lengths[k : k + 1]),
            np.ascontiguousarray(mask[k : k + 1]),
        )
        for k in range(n)
    ]


def run_feature_concurrency(
    url: str,
    model: str,
    concurrency: int,
    duration: float,
    *,
    samples: list[FeatureSample] | None = None,
    timeout: float = CLIENT_TIMEOUT,
) -> ConcurrencyResult:
    """Closed loop on a feature model: ``concurrency`` threads, each with its own ``FeatureClient`` (its own
    channel), one sample per request (``FeatureClient._request``: one gRPC call, no thread pool), for
    ``duration`` s after one untimed request each. Same result as ``loadgen.run_concurrency`` (latency send ->
    answer, samples/s in ``throughput``, the server's split per request)."""
    from avemo.client.features import FeatureClient

    def open_sender():
        client = FeatureClient(url, model, timeout=timeout)
        pool = samples or feature_samples(client.signature())

        def send(i: int) -> None:
            s = pool[i % len(pool)]
            client._request(s.features, s.lengths, s.mask)

        return client, send

    return closed_loop(url, model, concurrency, duration, open_sender, name="loadgen-features")


def measure_triton_features(url: str, models: list[str], concurrency: list[int], prof: dict, log: Callable) -> dict:
    """Closed-loop runs (``run_feature_concurrency``) per loaded feature model, after ``prof["warmup"]``
    requests; the same shape as ``serving.measure_triton``'s answer, with ``streams`` None."""
    from avemo.client.features import FeatureClient
    from avemo.client.grpc_stream import EmotionClientError
    from avemo.client.loadgen_cli import summary_line

    out: dict = {"models": {}, "skipped": {}, "streams": None}
    for name in models:
        try:
            with FeatureClient(url, name) as client:
                samples = feature_samples(client.signature())
                for _ in range(prof["warmup"]):  # the first requests load lazily initialised parts
                    client._request(samples[0].features, samples[0].lengths, samples[0].mask)
        except EmotionClientError as exc:
            out["skipped"][name] = str(exc)
            log(f"[triton] {name} skipped ({exc})")
            continue
        runs = []
        for c in concurrency:
            log(f"[triton] {name} c={c} (one sample per request): {prof['duration']:g} s ...")
            r = run_feature_concurrency(url, name, c, prof["duration"], samples=samples)
            log(f"[triton]   {summary_line(r).replace('windows/s', 'samples/s')}")
            runs.append(r)
        out["models"][name] = runs
    return out


# ------------------------------------------------------------------------------------ ratios


def feature_ratios(ref: tuple[str, dict] | None, triton: dict | None) -> list[dict]:
    """Per Triton model: p50 overhead at c=1 over in-process onnxruntime batch 1 (ms), and throughput at c=8
    over in-process onnxruntime at batch 8; rows as ``serving.ratios`` makes them (``unit`` added)."""
    rows = []

    def add(name: str, value: float | None, op: str, target: float, unit: str, why: str) -> None:
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        rows.append(
            {"name": name, "value": value, "op": op, "target": target, "met": met, "missing": why, "unit": unit}
        )

    ort = ref[1] if ref else None
    for name, runs in (triton or {}).get("models", {}).items():
        by_c = {r.concurrency: r for r in runs}
        c1, c8 = by_c.get(1), by_c.get(8)
        p50 = c1.latency_ms.p50 if c1 and c1.latency_ms else None
        why = "no in-process onnxruntime figure" if ort is None else ""
        add(
            f"Triton gRPC {name} p50 overhead over in-process onnxruntime p50, c=1 (ms)",
            p50 - ort["p50_ms"] if ort and p50 else None,
            "<=",
            TARGET_OVERHEAD_MS,
            " ms",
            why or ("" if p50 else "no answered c=1 run"),
        )
        add(
            f"Triton {name} throughput c=8 / in-process onnxruntime batch 8",
            c8.throughput / ort["throughput_b8"] if ort and c8 else None,
            ">=",
            TARGET_THROUGHPUT,
            "",
            why or ("" if c8 else "no c=8 run"),
        )
    return rows
