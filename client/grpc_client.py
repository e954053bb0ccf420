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

Same-host clients can pass tensors through Triton's SYSTEM shared memory instead of the gRPC message:

    client = EmotionClient(url, shared_memory=True)   # one-shot ``infer`` only; streams send bytes
    probs, weights = client.infer(audio, frames, mask)
    client.close()                                    # unregisters and destroys the regions

Failures: every unary call has a deadline (``timeout``). The stream survives a server restart
(reconnect + resend, see ``avemo.client.grpc_stream``) and raises ``ServerUnavailable`` only when the
server stays away for ``reconnect_timeout`` s; a window the server refuses is a ``WindowResult`` with
``error`` set (``raise_on_refused=True`` raises ``WindowError`` instead). No torch here (client/ must
stay importable without it).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as sysshm
from tritonclient.utils import InferenceServerException

from avemo.client.busy import is_busy, retry_busy
from avemo.client.grpc_stream import (
    _REQUEST_ID_RE,  # noqa: F401 - re-exported: where the request-id tag format lives
    CHANNEL_ARGS,
    RECONNECT_TIMEOUT,
    EmotionClientError,
    ResilientStream,
    ServerBusy,
    ServerUnavailable,
    WindowError,
    WindowResult,
)
from avemo.contract.endpoint import BUSY_RETRIES, CLIENT_TIMEOUT, GRPC_URL, MODEL_NAME
from avemo.contract.geometry import FACE_SIZE, SAMPLE_RATE, VIDEO_FPS, WindowGeometry
from avemo.contract.tensors import (
    AUDIO,
    FRAMES,
    INPUTS,
    MODALITY_MASK,
    MODALITY_WEIGHTS,
    NUMPY_DTYPES,
    OUTPUTS,
    PROBS,
    resolve_dims,
)

T = TypeVar("T")

__all__ = [
    "RECONNECT_TIMEOUT",
    "EmotionClient",
    "EmotionClientError",
    "ServedModel",
    "ServerBusy",
    "ServerUnavailable",
    "ShmLayout",
    "WindowError",
    "WindowResult",
    "served_model_from_config",
    "shm_layout",
]

_NUMPY_TO_TRITON = {np.dtype(np.float32): "FP32", np.dtype(np.uint8): "UINT8"}  # what _batch sends
_MAX_MESSAGE = 256 * 1024 * 1024  # a full batch: max_batch_size windows of F frames (served config), tens of MB
_SHM_ALIGN = 64  # byte alignment of each tensor inside a shared-memory region
_SHM_IDS = itertools.count()  # makes region names unique within this process
_SHM_HANDLES_LOCK = threading.Lock()  # tritonclient's create/destroy keep a module-level dict without a lock
_SHM_UNREGISTER_TIMEOUT = 5.0  # s: close() must not hang on a server that went away


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


@dataclass(frozen=True)
class ShmLayout:
    """Where each tensor of a request lives in the two system shared-memory regions of one client thread.

    ``capacity`` windows fit (the served ``max_batch_size``); tensor t of a batch of n windows occupies
    ``n * per_window[t]`` bytes from ``offsets[t]`` (each offset aligned to 64 bytes). Inputs (audio FP32
    [S], frames UINT8 [F,H,W,3], modality_mask FP32 [2]) share one region of ``input_bytes``; outputs
    (probs FP32 [C], modality_weights FP32 [2]) another of ``output_bytes``.
    """

    capacity: int
    per_window: dict[str, int]  # tensor name -> bytes of one window
    offsets: dict[str, int]  # tensor name -> byte offset in its region
    input_bytes: int
    output_bytes: int


def _align(n: int) -> int:
    return (n + _SHM_ALIGN - 1) // _SHM_ALIGN * _SHM_ALIGN


def shm_layout(served: ServedModel) -> ShmLayout:
    """The region layout for ``served``: room for ``max(1, max_batch_size)`` windows of every contract tensor."""
    capacity = max(1, served.max_batch_size)
    num_classes = served.num_classes
    if num_classes <= 0:
        raise EmotionClientError(f"served model '{served.name}' has no class count: cannot size shared memory")
    per_window, offsets, sizes = {}, {}, {}
    for group in (INPUTS, OUTPUTS):
        offset = 0
        for spec in group:
            dims = resolve_dims(spec, served.geometry, num_classes)
            per_window[spec.name] = int(np.prod(dims)) * NUMPY_DTYPES[spec.dtype].itemsize
            offsets[spec.name] = offset
            offset = _align(offset + capacity * per_window[spec.name])
        sizes[group] = offset
    return ShmLayout(capacity, per_window, offsets, sizes[INPUTS], sizes[OUTPUTS])


@dataclass
class _ShmRegions:
    """One thread's registered pair of system shared-memory regions (names as Triton knows them)."""

    input_name: str
    output_name: str
    input_handle: object  # tritonclient.utils.shared_memory.SharedMemoryRegion
    output_handle: object
    layout: ShmLayout


def request_retrying_busy(
    call: Callable[[], T],
    model_name: str,
    on_busy: Callable[[int, float, BaseException], None] | None = None,
    retries: int = BUSY_RETRIES,
) -> T:
    """One request, retried after a jittered backoff while the server answers busy (``client.busy``).
    ``ServerBusy`` when it is still busy after ``BUSY_RETRIES`` retries; ``EmotionClientError`` for any
    other failure."""
    try:
        return retry_busy(call, retries=retries, on_busy=on_busy)
    except InferenceServerException as exc:
        msg = f"inference failed on '{model_name}': {exc.message() or exc}"
        if is_busy(exc):
            raise ServerBusy(f"{msg} (still busy after {retries} retries with backoff)") from exc
        raise EmotionClientError(msg) from exc


class EmotionClient:
    """Talks to one model on one Triton server over gRPC.

    ``shared_memory=True`` (server on this host only): ``infer`` writes its inputs into a system shared-memory
    region and reads its outputs from another instead of carrying them in the gRPC messages. Thread
    safety: each thread that calls ``infer`` gets its own pair of regions (created and registered on its
    first call, sized for ``max_batch_size`` windows), so concurrent ``infer`` calls never share a buffer;
    ``close()`` unregisters and destroys every pair. Streams (``stream_iter``) always send the bytes.
    """

    def __init__(
        self,
        url: str = GRPC_URL,
        model_name: str = MODEL_NAME,
        timeout: float = CLIENT_TIMEOUT,
        reconnect_timeout: float = RECONNECT_TIMEOUT,
        on_event: Callable[[str], None] | None = None,
        shared_memory: bool = False,
    ) -> None:
        """``timeout``: deadline of every unary call, and the silence after which a stream with unanswered
        windows is presumed dead. ``reconnect_timeout``: how long a stream waits for a lost server.
        ``on_event``: gets one human-readable line per reconnect event (without it: logged as warnings).
        ``shared_memory``: one-shot ``infer`` passes tensors through Triton system shared memory (the
        server must run on this host; the first ``infer`` raises ``EmotionClientError`` otherwise)."""
        self.url = url
        self.model_name = model_name
        self.timeout = float(timeout)
        self.reconnect_timeout = float(reconnect_timeout)
        self.on_event = on_event
        self.reconnects = 0  # streams reopened after a transport failure, over this client's life
        self.busy_retries = 0  # one-shot calls retried after a busy answer, over this client's life
        channel_args = [
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            *CHANNEL_ARGS,
        ]
        self._client = grpcclient.InferenceServerClient(url=url, channel_args=channel_args)
        self._served: ServedModel | None = None
        self._stream_lock = threading.Lock()  # one stream at a time per InferenceServerClient
        self.shared_memory = bool(shared_memory)
        self._shm_local = threading.local()  # .regions: this thread's _ShmRegions
        self._shm_all: list[_ShmRegions] = []  # every thread's, for close()
        self._shm_lock = threading.Lock()  # guards _shm_all and _closed
        self._closed = False

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

    def infer(
        self, audio: np.ndarray, frames: np.ndarray, mask: np.ndarray, *, retry_busy: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """One-shot inference on one window ([S], [F,H,W,3], [2]) or a batch; returns probs [B,C], weights [B,2].

        A batch larger than the served ``max_batch_size`` is sent as several requests. A busy answer is
        retried after a jittered backoff (``ServerBusy`` when it lasts); ``retry_busy=False`` raises
        ``ServerBusy`` at the first one (a live window is stale by the time a retry would answer)."""
        audio, frames, mask, _ = self._batch(audio, frames, mask)
        regions = self._shm_regions() if self.shared_memory else None
        step = regions.layout.capacity if regions is not None else self.model().max_batch_size or len(audio)
        probs, weights = [], []
        for i in range(0, len(audio), step):
            sl = slice(i, i + step)

            def once(sl=sl):
                if regions is not None:
                    return self._infer_shm(regions, audio[sl], frames[sl], mask[sl])
                result = self._client.infer(
                    self.model_name,
                    self._inputs(audio[sl], frames[sl], mask[sl]),
                    outputs=self._outputs(),
                    client_timeout=self.timeout,
                )
                return result.as_numpy(PROBS), result.as_numpy(MODALITY_WEIGHTS)

            p, w = self.call_retrying_busy(once, retries=BUSY_RETRIES if retry_busy else 0)
            probs.append(p)
            weights.append(w)
        return np.concatenate(probs), np.concatenate(weights)

    def call_retrying_busy(self, call: Callable[[], T], retries: int = BUSY_RETRIES) -> T:
        """``call()`` with busy answers retried (``request_retrying_busy``), counted in ``busy_retries``."""

        def count(attempt: int, wait: float, exc: BaseException) -> None:
            self.busy_retries += 1

        return request_retrying_busy(call, self.model_name, count, retries=retries)

    # ------------------------------------------------------------------ system shared memory

    def _shm_regions(self) -> _ShmRegions:
        """This thread's regions, created and registered with the server on first use."""
        regions = getattr(self._shm_local, "regions", None)
        if regions is not None and not self._closed:
            return regions
        layout = shm_layout(self.model())
        tag = f"avemo_{os.getpid()}_{next(_SHM_IDS)}"
        names = (f"{tag}_in", f"{tag}_out")
        sizes = (layout.input_bytes, layout.output_bytes)
        handles: list = []
        registered: list[str] = []
        with self._shm_lock:
            if self._closed:
                raise EmotionClientError("this EmotionClient is closed")
            try:
                for name, size in zip(names, sizes):
                    with _SHM_HANDLES_LOCK:
                        handles.append(sysshm.create_shared_memory_region(name, "/" + name, size, create_only=True))
                for name, size in zip(names, sizes):
                    self._client.register_system_shared_memory(name, "/" + name, size, client_timeout=self.timeout)
                    registered.append(name)
            except (InferenceServerException, sysshm.SharedMemoryException) as exc:
                self._drop_shm(registered, handles)
                if isinstance(exc, sysshm.SharedMemoryException):
                    raise EmotionClientError(f"cannot create a system shared-memory region: {exc}") from exc
                if exc.status() in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"):
                    raise EmotionClientError(f"cannot reach the server at {self.url}: {exc.message() or exc}") from exc
                raise EmotionClientError(
                    f"the server at {self.url} cannot map this client's system shared memory "
                    f"({exc.message() or exc}): shared memory needs the server on this host (for a container: "
                    "--ipc=host or a shared /dev/shm); use shared_memory=False (plain gRPC) for a remote server"
                ) from exc
            regions = _ShmRegions(names[0], names[1], handles[0], handles[1], layout)
            self._shm_all.append(regions)
        self._shm_local.regions = regions
        return regions

    def _infer_shm(self, regions: _ShmRegions, audio, frames, mask) -> tuple[np.ndarray, np.ndarray]:
        """One request (at most ``capacity`` windows) through this thread's regions."""
        lay, n = regions.layout, len(audio)
        inputs = []
        for name, arr in ((AUDIO, audio), (FRAMES, frames), (MODALITY_MASK, mask)):
            sysshm.set_shared_memory_region(regions.input_handle, [arr], offset=lay.offsets[name])
            inp = grpcclient.InferInput(name, list(arr.shape), _NUMPY_TO_TRITON[arr.dtype])
            inp.set_shared_memory(regions.input_name, arr.nbytes, offset=lay.offsets[name])
            inputs.append(inp)
        outputs = []
        for name in (PROBS, MODALITY_WEIGHTS):
            out = grpcclient.InferRequestedOutput(name)
            out.set_shared_memory(regions.output_name, n * lay.per_window[name], offset=lay.offsets[name])
            outputs.append(out)
        result = self._client.infer(self.model_name, inputs, outputs=outputs, client_timeout=self.timeout)
        got = []
        for name in (PROBS, MODALITY_WEIGHTS):
            shape = [int(d) for d in result.get_output(name).shape]
            view = sysshm.get_contents_as_numpy(regions.output_handle, np.float32, shape, offset=lay.offsets[name])
            got.append(np.array(view, copy=True))  # the region is reused by the next request
        return got[0], got[1]

    def _drop_shm(self, registered: list[str], handles: list) -> None:
        """Unregister ``registered`` region names (best effort: the server may be gone) and destroy ``handles``."""
        wait = min(self.timeout, _SHM_UNREGISTER_TIMEOUT)
        for name in registered:
            try:
                self._client.unregister_system_shared_memory(name, client_timeout=wait)
            except InferenceServerException:
                pass
        for handle in handles:
            try:
                with _SHM_HANDLES_LOCK:
                    sysshm.destroy_shared_memory_region(handle)
            except (sysshm.SharedMemoryException, OSError, KeyError, BufferError):
                pass

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
        lag_budget: float | None = None,
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
        - A busy answer (the server's queue is full) is retried after a jittered backoff (``WindowResult.busy``).
        - ``lag_budget`` (s, live sources): a window whose answer would come later than that after its
          ``ready_at`` is dropped and yielded with ``shed=True``; one answered later has ``late=True``.
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
                lag_budget,
            )
            yield from stream.results()
        finally:
            self._stream_lock.release()

    def close(self) -> None:
        """Unregister and destroy the shared-memory regions (if any), then close the gRPC channel."""
        with self._shm_lock:
            self._closed = True
            regions, self._shm_all = self._shm_all, []
            for r in regions:
                self._drop_shm([r.input_name, r.output_name], [r.input_handle, r.output_handle])
        try:
            self._client.close()
        except Exception:
            pass

    def __enter__(self) -> EmotionClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
