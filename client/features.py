"""gRPC client of a served feature model (text / audio / vision feature sequences; ``contract.features``)
or conversation model (one dialogue per request; ``contract.dialogues``).

Everything it knows about the model -- modalities, feature sizes, padded lengths, task, class names,
speakers, batch limit -- comes from the served config (``<Signature>.from_parameters``); it keeps no copy.

    client = FeatureClient("127.0.0.1:8001", "mosei")
    sig = client.signature()                                     # modalities, dims, lengths, task
    x, n = pad_features(sig, "text", text_steps)                 # [L, D] zero padded, valid steps
    out = client.infer({"text": X_t, "audio": X_a, "video": X_v}, lengths, mask)
    out.values                                                   # prediction [B] or probs [B, C]
    probs, weights = client.infer_dialogue({"text": T, ...}, speakers)   # conversation model: [U, C], [U, M]

``infer`` splits a batch larger than the served ``max_batch_size`` into several requests and keeps up to
``concurrency`` of them in flight (the dynamic batcher groups what arrives together). A request the
server refuses raises ``EmotionClientError`` with the server's message (INVALID_ARG names the input).
No torch here.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from avemo.client.grpc_client import request_retrying_busy
from avemo.client.grpc_stream import EmotionClientError
from avemo.contract.dialogues import SPEAKERS, DialogueSignature
from avemo.contract.endpoint import CLIENT_TIMEOUT, GRPC_URL
from avemo.contract.features import FeatureSignature, lengths_name
from avemo.contract.tensors import MODALITY_MASK, MODALITY_WEIGHTS, NUMPY_DTYPES

_MAX_MESSAGE = 256 * 1024 * 1024  # a full batch of MOSEI-sized features is tens of MB


@dataclass
class FeatureAnswers:
    """The model's answers for B samples: ``values`` is prediction [B] (regression) or probs [B, C]."""

    values: np.ndarray
    modality_weights: np.ndarray  # [B, M]
    signature: FeatureSignature | DialogueSignature

    @property
    def labels(self) -> list[str] | None:
        """Predicted class names (classification), None for regression."""
        if self.signature.task == "regression":
            return None
        return [self.signature.labels[i] for i in self.values.argmax(-1)]


def pad_features(sig: FeatureSignature, modality: str, x: np.ndarray) -> tuple[np.ndarray, int]:
    """One sample's steps x [l, D] -> ([L, D] float32, zero padded after l, l). ValueError when the feature size
    is not the served one or l exceeds the served padded length L (the model was never trained on more)."""
    x = np.asarray(x, dtype=np.float32)
    steps, dim = sig.seq_lens[modality], sig.dims[modality]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{modality} features have shape {list(x.shape)}, expected [steps, {dim}]")
    if x.shape[0] > steps:
        raise ValueError(f"{modality}: {x.shape[0]} steps, the served model takes at most {steps} (its padding)")
    out = np.zeros((steps, dim), np.float32)
    out[: x.shape[0]] = x
    return out, int(x.shape[0])


class FeatureClient:
    """Talks to one feature model on one Triton server over gRPC (thread-safe)."""

    def __init__(self, url: str = GRPC_URL, model_name: str = "mosei", timeout: float = CLIENT_TIMEOUT) -> None:
        self.url, self.model_name, self.timeout = url, model_name, float(timeout)
        args = [("grpc.max_send_message_length", _MAX_MESSAGE), ("grpc.max_receive_message_length", _MAX_MESSAGE)]
        self._client = grpcclient.InferenceServerClient(url=url, channel_args=args)
        self._sig: FeatureSignature | DialogueSignature | None = None
        self.max_batch_size = 0

    def signature(self, refresh: bool = False) -> FeatureSignature | DialogueSignature:
        """What the served config says about the model (cached): a ``DialogueSignature`` for a conversation
        model (parameter kind ``dialogue``), else a ``FeatureSignature``."""
        if self._sig is not None and not refresh:
            return self._sig
        try:
            config = self._client.get_model_config(self.model_name, as_json=True, client_timeout=self.timeout)["config"]
        except InferenceServerException as exc:
            raise EmotionClientError(
                f"cannot read model '{self.model_name}' from {self.url}: {exc.message() or exc}"
            ) from exc
        params = {
            k: v.get("string_value", "") if isinstance(v, dict) else str(v)
            for k, v in (config.get("parameters") or {}).items()
        }
        kind = DialogueSignature if params.get("kind") == "dialogue" else FeatureSignature
        try:
            self._sig = kind.from_parameters(params)
        except ValueError as exc:
            raise EmotionClientError(f"served model '{self.model_name}' is not a feature model: {exc}") from exc
        self.max_batch_size = int(config.get("max_batch_size", 0) or 0)
        return self._sig

    def _send(self, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """One request: ``arrays`` by served input name (the signature's dtypes) -> (first output, weights)."""
        sig = self.signature()
        inputs = []
        for spec in sig.inputs:
            arr = np.ascontiguousarray(arrays[spec.name], dtype=NUMPY_DTYPES[spec.dtype])
            inp = grpcclient.InferInput(spec.name, list(arr.shape), spec.dtype)
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        outputs = [grpcclient.InferRequestedOutput(sig.output_name), grpcclient.InferRequestedOutput(MODALITY_WEIGHTS)]
        result = request_retrying_busy(
            lambda: self._client.infer(self.model_name, inputs, outputs=outputs, client_timeout=self.timeout),
            self.model_name,
        )
        return result.as_numpy(sig.output_name), result.as_numpy(MODALITY_WEIGHTS)

    def _request(self, features: dict, lengths: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One request of a feature model: features by model modality [b, L, D], lengths [b, M], mask [b, M]."""
        sig = self.signature()
        arrays = {MODALITY_MASK: mask}
        for i, (m, name) in enumerate(zip(sig.modalities, sig.served)):
            arrays[name], arrays[lengths_name(name)] = features[m], lengths[:, i : i + 1]
        return self._send(arrays)

    def infer_dialogue(
        self, features: dict[str, np.ndarray], speakers: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One whole dialogue through a conversation model: features by model modality [U, D_m], speakers [U]
        (0..S-1), mask [U, M] (default: every modality present) -> (probs [U, C], modality_weights [U, M])."""
        sig = self.signature()
        if not isinstance(sig, DialogueSignature):
            raise EmotionClientError(f"served model '{self.model_name}' is not a conversation model")
        speakers = np.asarray(speakers, np.int64).reshape(1, -1)  # [1, U]
        u = speakers.shape[1]
        arrays: dict[str, np.ndarray] = {SPEAKERS: speakers}
        arrays[MODALITY_MASK] = (np.ones((u, len(sig.modalities)), np.float32) if mask is None else mask)[None]
        for m, name in zip(sig.modalities, sig.served):
            arrays[name] = np.asarray(features[m], np.float32)[None]  # [1, U, D]
        probs, weights = self._send(arrays)
        return probs[0], weights[0]

    def infer(
        self,
        features: dict[str, np.ndarray],
        lengths: np.ndarray,
        mask: np.ndarray | None = None,
        batch_size: int | None = None,
        concurrency: int = 4,
    ) -> FeatureAnswers:
        """features: model modality -> float32 [B, L_m, D_m] (padded as served); lengths int64 [B, M] (valid steps,
        mask order); mask float32 [B, M] (default: every modality present). Requests of ``batch_size`` samples
        (default: the served max_batch_size), ``concurrency`` in flight."""
        sig = self.signature()
        if isinstance(sig, DialogueSignature):
            raise EmotionClientError(f"served model '{self.model_name}' is a conversation model: use infer_dialogue")
        missing = [m for m in sig.modalities if m not in features]
        if missing:
            raise ValueError(f"the served model reads {sig.modalities}; missing features of {missing}")
        feats = {m: np.asarray(features[m], dtype=np.float32) for m in sig.modalities}
        n = len(next(iter(feats.values())))
        lengths = np.asarray(lengths, dtype=np.int64).reshape(n, len(sig.modalities))
        mask = np.ones((n, len(sig.modalities)), np.float32) if mask is None else np.asarray(mask, np.float32)
        step = max(1, min(batch_size or self.max_batch_size or n, self.max_batch_size or n))
        starts = list(range(0, n, step))

        def run(i: int):
            sl = slice(i, i + step)
            return self._request({m: x[sl] for m, x in feats.items()}, lengths[sl], mask[sl])

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            parts = list(pool.map(run, starts))
        values = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 1), np.float32)
        weights = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, len(sig.modalities)), np.float32)
        if sig.task == "regression":
            values = values[:, 0]
        return FeatureAnswers(values, weights, sig)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> FeatureClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
