"""gRPC client for the served emotion model: model config reading, one-shot infer, streaming.

Everything the client knows about the model (labels, window geometry, tensor dims, batch limit)
comes from the server's model config -- the client keeps no copy of those numbers.

    client = EmotionClient()                      # contract.endpoint's GRPC_URL and MODEL_NAME
    served = client.model()                       # labels + geometry from the served config
    for r in client.stream_iter(windows):         # ONE bidirectional gRPC stream, results in order
        if r.error:                               # the server refused this window; the others go on
            print(r.index, "refused:", r.error)
        else:
            print(r.index, served.labels[r.probs.argmax()], r.latency_ms)

Failures: every unary call has a deadline (``timeout``). The stream survives a server restart
(reconnect + resend, see ``avemo.client.grpc_stream``) and raises ``ServerUnavailable`` only when the
server stays away for ``reconnect_timeout`` s; a window the server refuses is a ``WindowResult`` with
``error`` set (``raise_on_refused=True`` raises ``WindowError`` instead). No torch here (client/ must
stay importable without it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from avemo.client.grpc_stream import (
    _REQUEST_ID_RE,  # noqa: F401 - re-exported: where the request-id tag format lives
    CHANNEL_ARGS,
    RECONNECT_TIMEOUT,
    EmotionClientError,
    ResilientStream,
    ServerUnavailable,
    WindowError,
    WindowResult,
)
from avemo.contract.endpoint import CLIENT_TIMEOUT, GRPC_URL, MODEL_NAME
from avemo.contract.geometry import FACE_SIZE, SAMPLE_RATE, VIDEO_FPS, WindowGeometry
from avemo.contract.tensors import AUDIO, FRAMES, INPUTS, MODALITY_MASK, MODALITY_WEIGHTS, OUTPUTS, PROBS

__all__ = [
    "RECONNECT_TIMEOUT",
    "EmotionClient",
    "EmotionClientError",
    "ServedModel",
    "ServerUnavailable",
    "WindowError",
    "WindowResult",
    "served_model_from_config",
]

_NUMPY_TO_TRITON = {np.dtype(np.float32): "FP32", np.dtype(np.uint8): "UINT8"}  # what _batch sends
_MAX_MESSAGE = 256 * 1024 * 1024  # a full batch: max_batch_size windows of F frames (served config), tens of MB


@dataclass
class ServedModel:
    """What the server says about the model."""

    name: str
    version: str
    labels: list[str]
    geometry: WindowGeometry
    input_dims: dict[str, tuple]  # without batch dim, e.g. {"audio": (32000,), ...}
    max_batch_size: int
    parameters: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def _params(config: dict) -> dict[str, str]:
    out = {}
    for k, v in (config.get("parameters") or {}).items():
        out[k] = v.get("string_value", "") if isinstance(v, dict) else str(v)
    return out


def served_model_from_config(config: dict, version: str = "") -> ServedModel:
    """Build a ServedModel from a model config dict (``get_model_config(as_json=True)["config"]``)."""
    name = config.get("name", "")
    params = _params(config)
    dims = {inp["name"]: tuple(int(d) for d in inp.get("dims", [])) for inp in config.get("input", [])}
    out_dims = {out["name"]: tuple(int(d) for d in out.get("dims", [])) for out in config.get("output", [])}
    missing = [s.name for s in INPUTS if s.name not in dims] + [s.name for s in OUTPUTS if s.name not in out_dims]
    if missing:
        raise EmotionClientError(f"served model '{name}' does not follow the serving contract: missing {missing}")

    samples = dims[AUDIO][0] if dims[AUDIO] else -1
    frames_dims = dims[FRAMES]
    sample_rate = int(params.get("sample_rate") or SAMPLE_RATE)
    video_fps = int(params.get("video_fps") or VIDEO_FPS)
    face_size = int(params.get("face_size") or (frames_dims[1] if len(frames_dims) > 1 else FACE_SIZE))
    if params.get("window_seconds"):
        window_seconds = float(params["window_seconds"])
    elif samples > 0:
        window_seconds = samples / sample_rate
    else:
        raise EmotionClientError(f"served model '{name}' has neither a window_seconds parameter nor a fixed audio dim")
    hop_seconds = float(params.get("hop_seconds") or window_seconds / 2)
    geometry = WindowGeometry(
        sample_rate=sample_rate,
        video_fps=video_fps,
        face_size=face_size,
        window_seconds=window_seconds,
        hop_seconds=hop_seconds,
    )
    # the config's tensor dims are authoritative; the parameters must agree with them
    expect = {
        AUDIO: (geometry.window_samples,),
        FRAMES: (geometry.frames_per_window, face_size, face_size, 3),
    }
    for tname, want in expect.items():
        got = dims[tname]
        if len(got) != len(want) or any(g not in (-1, w) for g, w in zip(got, want)):
            raise EmotionClientError(
                f"served model '{name}': input '{tname}' dims {list(got)} disagree with the geometry parameters "
                f"{geometry} (expected {list(want)})"
            )

    num_classes = out_dims[PROBS][0] if out_dims[PROBS] else int(params.get("num_classes", 0) or 0)
    labels = [x for x in params.get("labels", "").split(",") if x] or [f"class_{i}" for i in range(num_classes)]
    if num_classes > 0 and len(labels) != num_classes:
        raise EmotionClientError(
            f"served model '{name}': {len(labels)} labels {labels} but output '{PROBS}' has {num_classes} classes"
        )
    return ServedModel(
        name=name,
        version=str(version),
        labels=labels,
        geometry=geometry,
        input_dims=dims,
        max_batch_size=int(config.get("max_batch_size", 0) or 0),
        parameters=params,
    )


class EmotionClient:
    """Talks to one model on one Triton server over gRPC."""

    def __init__(
        self,
        url: str = GRPC_URL,
        model_name: str = MODEL_NAME,
        timeout: float = CLIENT_TIMEOUT,
        reconnect_timeout: float = RECONNECT_TIMEOUT,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        """``timeout``: deadline of every unary call, and the silence after which a stream with unanswered
        windows is presumed dead. ``reconnect_timeout``: how long a stream waits for a lost server.
        ``on_event``: gets one human-readable line per reconnect event (without it: logged as warnings)."""
        self.url = url
        self.model_name = model_name
        self.timeout = float(timeout)
        self.reconnect_timeout = float(reconnect_timeout)
        self.on_event = on_event
        self.reconnects = 0  # streams reopened after a transport failure, over this client's life
        channel_args = [
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            *CHANNEL_ARGS,
        ]
        self._client = grpcclient.InferenceServerClient(url=url, channel_args=channel_args)
        self._served: ServedModel | None = None
        self._stream_lock = threading.Lock()  # one stream at a time per InferenceServerClient

    # ------------------------------------------------------------------ metadata

    def is_ready(self) -> bool:
        try:
            t = self.timeout
            return bool(
                self._client.is_server_ready(client_timeout=t)
                and self._client.is_model_ready(self.model_name, client_timeout=t)
            )
        except InferenceServerException:
            return False

    def model(self, refresh: bool = False) -> ServedModel:
        """Labels, geometry and dims of the served model (cached; ``refresh=True`` asks again)."""
        if self._served is not None and not refresh:
            return self._served
        try:
            config = self._client.get_model_config(self.model_name, as_json=True, client_timeout=self.timeout)["config"]
            meta = self._client.get_model_metadata(self.model_name, as_json=True, client_timeout=self.timeout)
        except InferenceServerException as exc:
            raise EmotionClientError(
                f"cannot read model '{self.model_name}' from {self.url}: {exc.message() or exc}"
            ) from exc
        versions = meta.get("versions") or [""]
        version = max(versions, key=lambda v: int(v) if str(v).isdigit() else -1)
        self._served = served_model_from_config(config, version)
        return self._served

    # ------------------------------------------------------------------ requests

    def _batch(self, audio, frames, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        served = self.model()
        audio = np.asarray(audio)
        frames = np.asarray(frames)
        mask = np.asarray(mask)
        single = audio.ndim == len(served.input_dims[AUDIO])
        if single:
            audio, frames, mask = audio[None], frames[None], mask[None]
        if frames.dtype != np.uint8:
            raise TypeError(f"frames must be uint8 RGB, got {frames.dtype}")
        if not np.issubdtype(audio.dtype, np.floating) or not np.issubdtype(mask.dtype, np.floating):
            raise TypeError(f"audio and modality_mask must be floating point, got {audio.dtype} / {mask.dtype}")
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        mask = np.ascontiguousarray(mask, dtype=np.float32)
        frames = np.ascontiguousarray(frames)
        for tname, arr in ((AUDIO, audio), (FRAMES, frames), (MODALITY_MASK, mask)):
            want = served.input_dims[tname]
            got = arr.shape[1:]
            if len(got) != len(want) or any(w not in (-1, g) for g, w in zip(got, want)):
                raise ValueError(
                    f"input '{tname}' has shape {list(arr.shape)}, the served model '{served.name}' expects "
                    f"[batch, {', '.join(map(str, want))}] (geometry {served.geometry})"
                )
        if not (len(audio) == len(frames) == len(mask)):
            raise ValueError(f"batch sizes differ: audio {len(audio)}, frames {len(frames)}, mask {len(mask)}")
        return audio, frames, mask, single

    @staticmethod
    def _inputs(audio: np.ndarray, frames: np.ndarray, mask: np.ndarray) -> list:
        inputs = []
        for name, arr in ((AUDIO, audio), (FRAMES, frames), (MODALITY_MASK, mask)):
            inp = grpcclient.InferInput(name, list(arr.shape), _NUMPY_TO_TRITON[arr.dtype])
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        return inputs

    @staticmethod
    def _outputs() -> list:
        return [grpcclient.InferRequestedOutput(PROBS), grpcclient.InferRequestedOutput(MODALITY_WEIGHTS)]

    def infer(self, audio: np.ndarray, frames: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One-shot inference on one window ([S], [F,H,W,3], [2]) or a batch; returns probs [B,C], weights [B,2]."""
        audio, frames, mask, _ = self._batch(audio, frames, mask)
        step = self.model().max_batch_size or len(audio)
        probs, weights = [], []
        for i in range(0, len(audio), step):
            sl = slice(i, i + step)
            try:
                result = self._client.infer(
                    self.model_name,
                    self._inputs(audio[sl], frames[sl], mask[sl]),
                    outputs=self._outputs(),
                    client_timeout=self.timeout,
                )
            except InferenceServerException as exc:
                raise EmotionClientError(f"inference failed on '{self.model_name}': {exc.message() or exc}") from exc
            probs.append(result.as_numpy(PROBS))
            weights.append(result.as_numpy(MODALITY_WEIGHTS))
        return np.concatenate(probs), np.concatenate(weights)

    def stream(self, windows: Iterable, **kwargs) -> list[WindowResult]:
        """Stream windows over ONE bidirectional gRPC stream; results in window order (see ``stream_iter``)."""
        return list(self.stream_iter(windows, **kwargs))

    def stream_iter(
        self,
        windows: Iterable,
        max_in_flight: int = 64,
        *,
        raise_on_refused: bool = False,
        reconnect_timeout: float | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> Iterator[WindowResult]:
        """Send windows as they are produced (a generator is fine: webcam/mic) and yield results in order.

        A sender thread pulls windows (``.start``, ``.audio``, ``.frames``, ``.mask``, optional
        ``.ready_at``) from ``windows`` and writes them to the stream, so a result is yielded as soon as
        it and all earlier ones are back, even while the producer waits for the next window.
        ``max_in_flight`` bounds the windows sent but not yet yielded.

        - A window the server refuses is yielded with ``error`` set (``probs`` None); with
          ``raise_on_refused=True`` it raises ``WindowError`` (in order) instead.
        - A transport failure (server restart, connection loss, ``timeout`` s of silence with windows
          unanswered) reconnects and resends the unanswered windows -- none lost, none answered twice;
          ``ServerUnavailable`` if the server is not back within ``reconnect_timeout`` s (default: the
          client's). ``on_event`` (default: the client's) hears about it; ``self.reconnects`` counts it.
        """
        self.model()  # config first: fail early, and dims for validation
        if not self._stream_lock.acquire(blocking=False):
            raise EmotionClientError("this EmotionClient already has an open stream; use another client")
        try:
            stream = ResilientStream(
                self,
                windows,
                max_in_flight,
                self.reconnect_timeout if reconnect_timeout is None else reconnect_timeout,
                on_event or self.on_event,
                raise_on_refused,
            )
            yield from stream.results()
        finally:
            self._stream_lock.release()

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:
            pass

    def __enter__(self) -> EmotionClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
