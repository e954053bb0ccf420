"""Load on a running Triton over gRPC (perf_analyzer's wheel is a stub here), torch-free; `avemo loadgen`
(``avemo.client.loadgen_cli``) is its command line.

Two kinds of run, each measured from this process:

- closed loop (``run_concurrency``): N worker threads, each with its own gRPC channel (its own
  ``EmotionClient``), send one window (batch 1), wait for the answer and send the next, for ``duration`` s.
  One untimed request per worker first (channel, model config, shared-memory regions). Reports requests,
  errors (count + first messages), latency p50/p95/p99 (ms, send -> answer) and throughput (answered
  windows/s). ``shared_memory=True`` passes the tensors through Triton system shared memory.
- streams (``run_streams``): N concurrent bidirectional gRPC streams, each through the client's real
  streaming path (``EmotionClient.stream_iter``: one stream per client, reconnects on transport failures).
  ``pace="realtime"`` (default) sends a window every ``hop_seconds`` of the served geometry, as a live
  camera + microphone would; the streams start staggered over one hop, so the offered load is
  N / hop windows/s and the latency is what N live users see. ``pace="max"`` sends a stream's next window
  as soon as its previous one is answered (a closed loop per stream: the server's capacity through
  streams). Reports windows, errors (refused windows + failed streams: must be 0), reconnects, latency,
  lag (window due -> answer: includes time a window waited to be sent when the client fell behind) and
  throughput.

Every run also reads the server's statistics (``/v2/models/<m>/stats``) before and after, and reports the
average time per request in the server's queue, compute_input, compute_infer and compute_output (us) and
the mean executed batch size: where the time goes besides the model.

Inputs are realistic windows built from the served config (``EmotionClient.model()``): audio
N(0, 0.3) clipped to [-1, 1] (FP32 [S]), random frames (UINT8 [F, H, W, 3]), mask (1, 1).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from avemo.contract.endpoint import CLIENT_TIMEOUT
from avemo.contract.windows import Window

PACES = ("realtime", "max")
MAX_ERROR_MESSAGES = 5  # distinct error messages kept per run
_STAT_PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


# ------------------------------------------------------------------------------------------ results


@dataclass
class Latency:
    """Percentiles of a latency sample, in ms."""

    count: int
    p50: float
    p95: float
    p99: float
    mean: float
    max: float

    @classmethod
    def of(cls, values_ms: list[float]) -> Latency | None:
        if not values_ms:
            return None
        a = np.asarray(values_ms, np.float64)
        p50, p95, p99 = (float(x) for x in np.percentile(a, [50, 95, 99]))
        return cls(len(a), p50, p95, p99, float(a.mean()), float(a.max()))


@dataclass
class ServerSplit:
    """Server-side average per request over a run (``get_inference_statistics`` deltas), in us."""

    requests: int  # successful inference requests
    executions: int  # model executions (batches)
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float

    @property
    def mean_batch(self) -> float:
        return self.requests / self.executions if self.executions else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "mean_batch": self.mean_batch}


@dataclass
class ConcurrencyResult:
    """A closed-loop run: ``concurrency`` workers, one window per request, for ``duration_s``."""

    model: str
    concurrency: int
    duration_s: float  # from the first send to the last answer
    shared_memory: bool
    requests: int  # answered
    errors: int
    error_messages: list[str] = field(default_factory=list)
    latency_ms: Latency | None = None
    throughput: float = 0.0  # answered windows / s
    server: ServerSplit | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["server"] = self.server.to_dict() if self.server else None
        return d


@dataclass
class StreamsResult:
    """``streams`` concurrent bidirectional streams for ``duration_s`` at ``pace``."""

    model: str
    streams: int
    pace: str  # "realtime" (a window per hop) or "max" (next window when the previous is answered)
    hop_s: float
    duration_s: float  # from the first send to the last answer
    windows: int  # answered
    errors: int  # refused windows + streams that failed
    error_messages: list[str] = field(default_factory=list)
    reconnects: int = 0
    sent: int = 0  # windows the sources produced
    lost: int = 0  # produced, but never answered, refused nor shed (a failed stream's remainder)
    duplicated: int = 0  # windows yielded more than once (the client's dedupe failed)
    shed: int = 0  # dropped: the answer would have come later than lag_budget_s
    late: int = 0  # answered, but later than lag_budget_s
    busy: int = 0  # busy answers (queue full), each retried after a backoff
    lag_budget_s: float | None = None
    latency_ms: Latency | None = None  # send -> answer
    lag_ms: Latency | None = None  # window due -> answer
    throughput: float = 0.0  # answered windows / s
    server: ServerSplit | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["server"] = self.server.to_dict() if self.server else None
        return d


# ------------------------------------------------------------------------------------------ helpers


def make_windows(served, n: int = 8, seed: int = 0) -> list[Window]:
    """``n`` random windows in range for the served geometry (``ServedModel``): audio FP32 [S] in [-1, 1],
    frames UINT8 [F, H, W, 3], mask FP32 [2] = (1, 1)."""
    g = served.geometry
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        audio = np.clip(0.3 * rng.standard_normal(g.window_samples), -1.0, 1.0).astype(np.float32)
        frames = rng.integers(0, 256, (g.frames_per_window, g.face_size, g.face_size, 3), dtype=np.uint8)
        out.append(Window(start=i * g.hop_seconds, audio=audio, frames=frames, mask=np.ones(2, np.float32)))
    return out


def server_stats(client, model: str) -> dict[str, int]:
    """Cumulative counters of ``model`` (all versions): {"requests", "executions", "<phase>_ns"} from a
    tritonclient gRPC ``InferenceServerClient``."""
    stats = client.get_inference_statistics(model, as_json=True).get("model_stats", [])
    total = {"requests": 0, "executions": 0, **{f"{p}_ns": 0 for p in _STAT_PHASES}}
    for m in stats:
        inf = m.get("inference_stats", {})
        total["requests"] += int(inf.get("success", {}).get("count", 0))
        total["executions"] += int(m.get("execution_count", 0))
        for p in _STAT_PHASES:
            total[f"{p}_ns"] += int(inf.get(p, {}).get("ns", 0))
    return total


def server_split(before: dict[str, int], after: dict[str, int]) -> ServerSplit:
    """Average us per request between two ``server_stats`` readings."""
    n = after["requests"] - before["requests"]
    per = {p: (after[f"{p}_ns"] - before[f"{p}_ns"]) / n / 1000.0 if n else 0.0 for p in _STAT_PHASES}
    return ServerSplit(
        requests=n,
        executions=after["executions"] - before["executions"],
        queue_us=per["queue"],
        compute_input_us=per["compute_input"],
        compute_infer_us=per["compute_infer"],
        compute_output_us=per["compute_output"],
    )


class _Tally:
    """Thread-safe collection of latencies, errors and answer times of one run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: list[float] = []
        self.lag: list[float] = []
        self.errors = 0
        self.messages: list[str] = []
        self.last = 0.0  # perf_counter of the last answer
        self.reconnects = 0
        self.sent = self.lost = self.duplicated = self.shed = self.late = self.busy = 0

    def ok(self, latency_ms: float, lag_ms: float | None = None) -> None:
        with self.lock:
            self.latency.append(latency_ms)
            if lag_ms is not None:
                self.lag.append(lag_ms)
            self.last = max(self.last, time.perf_counter())

    def error(self, message: str) -> None:
        with self.lock:
            self.errors += 1
            if message not in self.messages and len(self.messages) < MAX_ERROR_MESSAGES:
                self.messages.append(message)


class _Clock:
    """The start of a run, shared by its threads: stamped (after ``on_start``) once all have set up."""

    def __init__(self, parties: int, on_start=None) -> None:
        self.start = 0.0
        self.on_start = on_start
        self.barrier = threading.Barrier(parties, action=self._go)

    def _go(self) -> None:
        if self.on_start is not None:
            self.on_start()
        self.start = time.perf_counter()


def _run_workers(url: str, model: str, n: int, worker, name: str) -> tuple[_Clock, ServerSplit | None]:
    """Run ``worker(k, clock)`` in ``n`` threads and wait for them. Each worker sets up, then waits on
    ``clock.barrier``; the server's statistics are read there (after every warm-up request) and at the end."""
    import tritonclient.grpc as grpcclient

    raw = grpcclient.InferenceServerClient(url)
    before: dict[str, int] = {}

    def read_before() -> None:
        try:
            before.update(server_stats(raw, model))
        except Exception:  # noqa: BLE001 - statistics are extra: a server without them still gets measured
            pass

    clock = _Clock(n, on_start=read_before)
    try:
        threads = [threading.Thread(target=worker, args=(k, clock), name=f"{name}-{k}") for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            split = server_split(before, server_stats(raw, model)) if before else None
        except Exception:  # noqa: BLE001
            split = None
    finally:
        raw.close()
    return clock, split


# ------------------------------------------------------------------------------------------ runs


def closed_loop(
    url: str,
    model: str,
    concurrency: int,
    duration: float,
    open_sender: Callable[[], tuple[Any, Callable[[int], None]]],
    *,
    shared_memory: bool = False,
    name: str = "loadgen",
) -> ConcurrencyResult:
    """``concurrency`` threads, each with ``open_sender()`` -> (its own client, ``send(i)`` doing request i),
    one untimed request each, then requests back to back for ``duration`` s; latency from send to answer and
    the server's split per request. The client is closed at the end."""
    tally = _Tally()

    def worker(k: int, clock: _Clock) -> None:
        client = None
        try:
            try:
                client, send = open_sender()
                send(0)  # untimed: channel, config, regions
            except Exception as exc:  # noqa: BLE001 - reported as this run's error
                tally.error(f"{type(exc).__name__}: {exc}")
                clock.barrier.wait()
                return
            clock.barrier.wait()
            end, i = clock.start + duration, k
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    send(i)
                except Exception as exc:  # noqa: BLE001
                    tally.error(f"{type(exc).__name__}: {exc}")
                    time.sleep(0.01)  # a dead server fails fast: do not spin
                    continue
                finally:
                    i += 1
                tally.ok((time.perf_counter() - t0) * 1000.0)
        finally:
            if client is not None:
                client.close()

    clock, split = _run_workers(url, model, concurrency, worker, name)
    elapsed = max(tally.last - clock.start, 1e-9) if tally.latency else 0.0
    return ConcurrencyResult(
        model=model,
        concurrency=concurrency,
        duration_s=elapsed,
        shared_memory=shared_memory,
        requests=len(tally.latency),
        errors=tally.errors,
        error_messages=tally.messages,
        latency_ms=Latency.of(tally.latency),
        throughput=len(tally.latency) / elapsed if elapsed else 0.0,
        server=split,
    )


def run_concurrency(
    url: str,
    model: str,
    concurrency: int,
    duration: float,
    *,
    shared_memory: bool = False,
    windows: list[Window] | None = None,
    timeout: float = CLIENT_TIMEOUT,
) -> ConcurrencyResult:
    """Closed loop: ``concurrency`` threads, each with its own client, one window per request, ``duration`` s."""
    from avemo.client.grpc_client import EmotionClient

    def open_sender():
        client = EmotionClient(url, model, timeout=timeout, shared_memory=shared_memory)
        pool = windows or make_windows(client.model())

        def send(i: int) -> None:
            w = pool[i % len(pool)]
            client.infer(w.audio, w.frames, w.mask)

        return client, send

    return closed_loop(url, model, concurrency, duration, open_sender, shared_memory=shared_memory)


def run_streams(
    url: str,
    model: str,
    streams: int,
    duration: float,
    *,
    pace: str = "realtime",
    windows: list[Window] | None = None,
    timeout: float = CLIENT_TIMEOUT,
    max_in_flight: int = 64,
    lag_budget: float | None = None,
    reconnect_timeout: float | None = None,
    on_event: Callable[[str], None] | None = None,
) -> StreamsResult:
    """``streams`` concurrent bidirectional streams for ``duration`` s (see the module docstring for ``pace``).

    Every window is accounted for: answered, refused (an error), shed (``lag_budget`` s, live semantics),
    lost (never yielded: its stream failed) or yielded twice (duplicated); ``on_event`` hears each stream's
    reconnect lines (default: none)."""
    from avemo.client.grpc_client import EmotionClient

    if pace not in PACES:
        raise ValueError(f"pace must be one of {PACES}, got {pace!r}")
    tally = _Tally()
    hop = [0.0]

    def worker(k: int, clock: _Clock) -> None:
        client = None
        try:
            try:
                options: dict[str, Any] = {} if reconnect_timeout is None else {"reconnect_timeout": reconnect_timeout}
                client = EmotionClient(url, model, timeout=timeout, **options)
                served = client.model()
                pool = windows or make_windows(served, seed=k)
            except Exception as exc:  # noqa: BLE001
                tally.error(f"stream {k}: {type(exc).__name__}: {exc}")
                clock.barrier.wait()
                return
            hop[0] = served.geometry.hop_seconds
            clock.barrier.wait()
            end = clock.start + duration
            first = clock.start + (k * hop[0] / streams if pace == "realtime" else 0.0)
            answered = threading.Semaphore(1)  # pace "max": one window in flight
            produced = [0]

            def source():
                i = 0
                while True:
                    if pace == "realtime":
                        due = first + i * hop[0]
                        if due >= end:
                            return
                        time.sleep(max(0.0, due - time.perf_counter()))
                    else:
                        while not answered.acquire(timeout=0.1):
                            if time.perf_counter() >= end:
                                return
                        due = time.perf_counter()
                        if due >= end:
                            return
                    w = pool[(k + i) % len(pool)]
                    yield Window(start=i * hop[0], audio=w.audio, frames=w.frames, mask=w.mask, ready_at=due)
                    i += 1
                    produced[0] = i

            seen: set[int] = set()
            dup = shed = late = busy = 0
            listen = (lambda line: on_event(f"stream {k}: {line}")) if on_event else (lambda line: None)
            try:
                for r in client.stream_iter(
                    source(), max_in_flight=max_in_flight, on_event=listen, lag_budget=lag_budget
                ):
                    answered.release()
                    dup += r.index in seen
                    seen.add(r.index)
                    busy += r.busy
                    if r.shed:
                        shed += 1
                    elif r.error is not None:
                        tally.error(f"window refused: {r.error}")
                    else:
                        late += r.late
                        tally.ok(r.latency_ms, r.lag_ms)
            except Exception as exc:  # noqa: BLE001 - the stream failed: one error, the others go on
                tally.error(f"stream {k}: {type(exc).__name__}: {exc}")
            with tally.lock:
                tally.reconnects += client.reconnects
                tally.sent += produced[0]
                tally.lost += produced[0] - len(seen)
                tally.duplicated += dup
                tally.shed += shed
                tally.late += late
                tally.busy += busy
        finally:
            if client is not None:
                client.close()

    clock, split = _run_workers(url, model, streams, worker, "loadgen-stream")
    elapsed = max(tally.last - clock.start, 1e-9) if tally.latency else 0.0
    return StreamsResult(
        model=model,
        streams=streams,
        pace=pace,
        hop_s=hop[0],
        duration_s=elapsed,
        windows=len(tally.latency),
        errors=tally.errors,
        error_messages=tally.messages,
        reconnects=tally.reconnects,
        sent=tally.sent,
        lost=tally.lost,
        duplicated=tally.duplicated,
        shed=tally.shed,
        late=tally.late,
        busy=tally.busy,
        lag_budget_s=lag_budget,
        latency_ms=Latency.of(tally.latency),
        lag_ms=Latency.of(tally.lag),
        throughput=len(tally.latency) / elapsed if elapsed else 0.0,
        server=split,
    )
