"""The resilient bidirectional gRPC stream behind ``EmotionClient.stream_iter`` (and its result/error types).

One stream carries every window; results come back in window order. Three kinds of failure are told apart:

- a window the server REFUSES (an error response naming its request id, e.g. INVALID_ARG for non-finite
  audio) is yielded in order as a ``WindowResult`` with ``error`` set; the other windows go on;
- a TRANSPORT failure (the stream ends with a gRPC status such as UNAVAILABLE / CANCELLED /
  DEADLINE_EXCEEDED, an error naming no request -- e.g. "unknown model" while the server shuts down --
  or no answer for ``timeout`` s while the stream is otherwise silent): the stream is cancelled, the
  client waits up to ``reconnect_timeout`` s for the server and model to be ready again, opens a new
  stream and resends every unanswered window in index order. Request ids are ``"<index>.<generation>"``
  (plus ``".<n>"`` for the n-th resend after a busy answer) and every callback is tagged with its stream's
  generation, so a late answer from an abandoned stream is dropped: no window is lost or answered twice.
  A server that does not come back raises ``ServerUnavailable``;
- a BUSY answer (Triton's bounded queue: "Exceeds maximum queue size" / "Request timeout expired", see
  ``client.busy``) keeps the window pending and resends it after a jittered backoff, on the same stream;
  the stream sends nothing else until then (new windows wait with it), so an overloaded server is not
  offered every pending window again each backoff;
- anything else (a producer error, a non-transport gRPC status) ends the stream with an exception.

Real time: with ``lag_budget`` (s), a window whose answer would come later than that after its media was
ready (``ready_at``) is dropped instead of queued: not sent when it is already that late, sent with the
rest of the budget as Triton's per-request queue timeout (the server refuses it rather than run it late),
and not retried when the backoff would overrun the budget. A dropped window is yielded in order with
``shed=True`` (and ``error`` saying why); an answer that still came later than the budget has ``late=True``.
Without a budget (a file) every window is answered, however long the server stays busy.

Memory: a window's arrays are kept until it is yielded; at most ``max_in_flight`` windows are held.
The same ``InferenceServerClient`` (one gRPC channel) is reused after a server restart: gRPC reconnects
the channel by itself, and the channel's reconnect back-off is capped at 1 s (``CHANNEL_ARGS``) so a
restarted server is seen within about a second.
"""

from __future__ import annotations

import functools
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from tritonclient.utils import InferenceServerException

from avemo.client.busy import backoff, is_busy_message, name_requests_in_stream_errors
from avemo.contract.tensors import MODALITY_WEIGHTS, PROBS

RECONNECT_TIMEOUT = 60.0  # seconds a stream waits for a lost server to come back before giving up
CHANNEL_ARGS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]
_POLL_TIMEOUT = 2.0  # deadline of each readiness call while reconnecting
_MAX_FAILS_WITHOUT_ANSWER = 4  # reconnects in a row that got no window answered: the server is broken
# gRPC statuses that end a stream because of the connection/server, not because of what was sent
_TRANSPORT_CODES = {
    "StatusCode.UNAVAILABLE",
    "StatusCode.CANCELLED",
    "StatusCode.DEADLINE_EXCEEDED",
    "StatusCode.ABORTED",
    "StatusCode.INTERNAL",
    "StatusCode.UNKNOWN",
    "StatusCode.DATA_LOSS",
}
_REQUEST_ID_RE = re.compile(r"\[request[ _]id[:=] ?([^\]]*)\]")  # Triton core / our Python backend tags

log = logging.getLogger(__name__)
name_requests_in_stream_errors()  # so a queue timeout names its window like every other refusal


class EmotionClientError(RuntimeError):
    """The server rejected a request or could not be reached."""


class WindowError(EmotionClientError):
    """The server refused one streamed window (raised only with ``raise_on_refused=True``)."""

    def __init__(self, index: int | None, start: float | None, message: str):
        where = f"window {index} (start {start:.2f} s)" if index is not None and start is not None else "a window"
        super().__init__(f"{where}: {message}")
        self.index, self.start, self.server_message = index, start, message


class ServerBusy(EmotionClientError):
    """The server kept answering busy (its queue full) through every retry of a one-shot call."""


class ServerUnavailable(EmotionClientError):
    """A transport failure the stream could not recover from (not a bad window)."""

    def __init__(self, message: str, url: str = "", unanswered: list[int] | None = None):
        super().__init__(message)
        self.url, self.unanswered = url, list(unanswered or [])


@dataclass
class WindowResult:
    index: int
    start: float
    probs: np.ndarray | None  # float32 [C]; None when the server refused the window
    modality_weights: np.ndarray | None  # float32 [2] (audio, video); None when refused
    latency_ms: float  # (last) send -> answer
    error: str | None = None  # the server's message when it refused this window
    lag_ms: float | None = None  # window's media available (``ready_at``) -> answer; None without ready_at
    shed: bool = False  # dropped: its answer would have come later than the stream's lag budget
    late: bool = False  # answered, but later than the lag budget after its media
    busy: int = 0  # busy answers this window got before its answer (each retried after a backoff)


@dataclass
class _Pending:
    index: int
    start: float
    arrays: tuple  # audio [1, S], frames [1, F, H, W, 3], mask [1, 2]: kept for a resend until answered
    ready_at: float | None
    rid: str = ""
    t_send: float | None = None  # perf_counter of the send on the current stream; None: not sent on it
    busy: int = 0  # busy answers so far
    retry_at: float | None = None  # perf_counter when a busy window is sent again


class ResilientStream:
    """One ``stream_iter`` call: a sender thread feeds windows, ``results()`` yields them in order.

    ``client`` is the EmotionClient (its tritonclient ``_client``, ``_batch``, ``_inputs``, ``_outputs``,
    ``model()``, ``url``, ``model_name``, ``timeout`` and ``reconnects`` counter are used).
    """

    def __init__(
        self,
        client,
        windows: Iterable,
        max_in_flight: int,
        reconnect_timeout: float,
        on_event: Callable[[str], None] | None,
        raise_on_refused: bool,
        lag_budget: float | None = None,
    ) -> None:
        self.client, self.windows = client, windows
        self.lag_budget = None if lag_budget is None else float(lag_budget)
        self.reconnect_timeout = float(reconnect_timeout)
        self.on_event, self.raise_on_refused = on_event, raise_on_refused
        self.events: queue.Queue = queue.Queue()
        self.lock = threading.Lock()  # guards pending, gen, up and every call on the tritonclient stream
        self.pending: dict[int, _Pending] = {}  # sent (or waiting to be resent), not answered
        self.gen = 0  # stream generation: answers of an abandoned stream carry an older one
        self.up = False  # a stream is open and windows may be sent on it
        self.stop = threading.Event()
        self.slots = threading.Semaphore(max(1, int(max_in_flight)))
        self.last_answer = 0.0  # perf_counter of the last answer on the current stream
        self.fails_without_answer = 0  # transport failures since the last answer
        self.failing_since = (0.0, 0.0)  # (time.time(), time.monotonic()) of the first of them
        self.stale = 0  # answers dropped because their window was already answered (or unknown)
        self.busy = self.shed = self.late = 0  # busy answers, windows dropped, windows answered late
        self.hold_until = 0.0  # perf_counter before which this stream sends nothing (the server said busy)

    # ---------------------------------------------------------------- stream primitives (hold self.lock)

    def _callback(self, gen: int, result=None, error=None) -> None:
        self.events.put(("answer", gen, result, error, time.perf_counter()))

    def _open(self) -> None:
        self.client._client.start_stream(callback=functools.partial(self._callback, self.gen))
        self.up = True

    def _send(self, p: _Pending) -> None:
        now = time.perf_counter()
        retry = f".{p.busy}" if p.busy else ""  # a busy window's resend gets an id of its own
        p.rid, p.t_send, p.retry_at = f"{p.index}.{self.gen}{retry}", now, None
        extra = {}
        left = self._budget_left(p, now)
        if left is not None:  # the server refuses it once it has waited the rest of the budget in its queue
            extra["timeout"] = max(1, int(left * 1e6))
        try:
            c = self.client
            c._client.async_stream_infer(
                c.model_name, c._inputs(*p.arrays), request_id=p.rid, outputs=c._outputs(), **extra
            )
        except InferenceServerException:  # the stream just died: its error callback triggers the resend
            p.t_send = None

    def _budget_left(self, p: _Pending, now: float) -> float | None:
        """Seconds of the lag budget this window has left (negative: over); None without a budget."""
        if self.lag_budget is None or p.ready_at is None:
            return None
        return self.lag_budget - (now - p.ready_at)

    def _shed(self, p: _Pending, why: str) -> WindowResult:
        self.shed += 1
        now = time.perf_counter()
        return WindowResult(
            index=p.index,
            start=p.start,
            probs=None,
            modality_weights=None,
            latency_ms=float("nan"),
            error=f"shed: {why}",
            lag_ms=(now - p.ready_at) * 1000.0 if p.ready_at is not None else None,
            shed=True,
            busy=p.busy,
        )

    def _close(self, cancel: bool) -> None:
        self.up = False
        try:
            self.client._client.stop_stream(cancel_requests=cancel)
        except Exception:  # noqa: BLE001 - closing a broken stream
            pass

    # ---------------------------------------------------------------- sender thread

    def _produce(self) -> None:
        count = 0
        try:
            for i, w in enumerate(self.windows):
                if self.stop.is_set():
                    return
                audio, frames, mask, _ = self.client._batch(w.audio, w.frames, w.mask)
                while not self.slots.acquire(timeout=0.1):
                    if self.stop.is_set():
                        return
                p = _Pending(i, float(w.start), (audio, frames, mask), getattr(w, "ready_at", None))
                left = self._budget_left(p, time.perf_counter())
                if left is not None and left <= 0:  # already later than the budget: not worth a request
                    assert self.lag_budget is not None  # (a budget left implies a budget)
                    self.events.put(("shed", p, f"{-left + self.lag_budget:.2f} s after its media, before sending"))
                    count = i + 1
                    continue
                with self.lock:
                    self.pending[i] = p
                    if time.perf_counter() < self.hold_until:  # backing off: goes with the resends
                        p.retry_at = self.hold_until
                    elif self.up:  # else: the reconnect resends it
                        self._send(p)
                count = i + 1
            self.events.put(("done", count))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            self.events.put(("fail", exc))

    # ---------------------------------------------------------------- consumer

    def results(self) -> Iterator[WindowResult]:
        with self.lock:
            self._open()
        self.last_answer = time.perf_counter()
        thread = threading.Thread(target=self._produce, name="avemo-stream-sender", daemon=True)
        thread.start()
        done: dict[int, WindowResult] = {}
        total, next_index, clean = None, 0, False
        try:
            while total is None or next_index < total:
                for r in self._resend_due():
                    done[r.index] = r
                try:
                    event = self.events.get(timeout=self._next_wait())
                except queue.Empty:
                    silent = self._silent_window()
                    if silent:
                        self._reconnect(silent)
                    event = None
                if event is None:
                    pass
                elif event[0] == "done":
                    total = event[1]
                elif event[0] == "fail":
                    raise event[1]
                elif event[0] == "shed":
                    done[event[1].index] = self._shed(event[1], event[2])
                elif event[1] == self.gen:  # answers of an abandoned stream are dropped here
                    answer = self._answer(*event[2:])
                    if answer is not None:
                        done[answer.index] = answer
                while next_index in done:
                    r = done.pop(next_index)
                    next_index += 1
                    self.slots.release()
                    if r.error is not None and self.raise_on_refused:
                        raise WindowError(r.index, r.start, r.error)
                    yield r
            clean = True
        finally:
            self.stop.set()
            thread.join(timeout=1)
            with self.lock:
                self._close(cancel=not clean)  # error or consumer stopped early: drop what is in flight

    def _next_wait(self) -> float:
        """How long the consumer may block: until the next busy window is due, at most 0.25 s."""
        with self.lock:
            due = [p.retry_at for p in self.pending.values() if p.retry_at is not None]
        if not due:
            return 0.25
        return min(0.25, max(0.0, min(due) - time.perf_counter()))

    def _resend_due(self) -> list[WindowResult]:
        """Send the busy windows whose backoff is over (on the open stream); shed those out of budget."""
        now = time.perf_counter()
        shed: list[WindowResult] = []
        with self.lock:
            if not self.up or now < self.hold_until:
                return shed
            due = sorted(
                (p for p in self.pending.values() if p.retry_at is not None and p.retry_at <= now),
                key=lambda p: p.index,
            )
            for p in due:
                left = self._budget_left(p, now)
                if left is not None and left <= 0:
                    del self.pending[p.index]
                    shed.append(self._shed(p, f"still busy after {p.busy} tries, out of the lag budget"))
                else:
                    self._send(p)
        return shed

    def _busy(self, rid: str, msg: str, t_recv: float) -> WindowResult | None:
        """A busy answer for ``rid``: back off and resend the window, or shed it when that would be too late."""
        with self.lock:
            p = self._current(rid)
            if p is None:
                return None
            self.busy += 1
            p.busy += 1
            wait = backoff(p.busy)
            left = self._budget_left(p, t_recv)
            if left is not None and left <= wait:
                del self.pending[p.index]
                return self._shed(p, f"server busy ({msg.split('] ')[-1]}), no time left in the lag budget")
            p.t_send, p.retry_at = None, t_recv + wait
            # the whole stream holds back, not this window alone: N windows retrying on their own would
            # offer the overloaded server N requests per backoff instead of one stream's worth
            self.hold_until = max(self.hold_until, t_recv + wait)
        self.last_answer, self.fails_without_answer = t_recv, 0  # a busy answer is an answer: the server is up
        return None

    def _take(self, rid: str) -> _Pending | None:
        """The pending window this request id belongs to, removed; None for a stale or unknown id."""
        with self.lock:
            p = self._current(rid)
            if p is not None:
                del self.pending[p.index]
            return p

    def _current(self, rid: str) -> _Pending | None:
        """The pending window whose current request is ``rid`` (hold self.lock); None for a stale or unknown id."""
        try:
            p = self.pending.get(int(rid.split(".")[0]))
        except ValueError:
            p = None
        if p is None or p.rid != rid:
            self.stale += 1
            return None
        return p

    def _answer(self, result, error, t_recv: float) -> WindowResult | None:
        if error is None:
            p = self._take(result.get_response().id)
            probs, weights, msg = result.as_numpy(PROBS)[0], result.as_numpy(MODALITY_WEIGHTS)[0], None
        else:
            msg = (error.message() if isinstance(error, InferenceServerException) else None) or str(error)
            status = error.status() if isinstance(error, InferenceServerException) else None
            m = _REQUEST_ID_RE.search(msg)
            if status is None and m and is_busy_message(msg):  # not now: try again later
                return self._busy(m.group(1).strip(), msg, t_recv)
            if status is None and m:  # the server refused this one request
                p, probs, weights = self._take(m.group(1).strip()), None, None
            elif status is not None and status not in _TRANSPORT_CODES:
                raise EmotionClientError(f"the stream to {self.client.url} failed: {error}")
            else:  # the stream died, or the server failed a request without naming it (shutting down)
                self._reconnect(f"{status}: {msg}" if status else f"an error naming no window: {msg}")
                return None
        if p is None:
            return None
        self.last_answer, self.fails_without_answer = t_recv, 0
        late = self._budget_left(p, t_recv)
        late = late is not None and late < 0 and msg is None
        self.late += late
        return WindowResult(
            index=p.index,
            start=p.start,
            probs=probs,
            modality_weights=weights,
            latency_ms=(t_recv - p.t_send) * 1000.0 if p.t_send is not None else float("nan"),
            error=msg,
            lag_ms=(t_recv - p.ready_at) * 1000.0 if p.ready_at is not None else None,
            late=late,
            busy=p.busy,
        )

    def _silent_window(self) -> str | None:
        """The deadline: a sent window unanswered for ``timeout`` s while nothing else came back."""
        with self.lock:
            sent = [(p.t_send, p) for p in self.pending.values() if p.t_send is not None]
        if not sent:
            return None
        t_send, oldest = min(sent, key=lambda s: s[0])
        quiet = time.perf_counter() - max(t_send, self.last_answer)
        if quiet <= self.client.timeout:
            return None
        return f"StatusCode.DEADLINE_EXCEEDED: no answer for window {oldest.index} in {quiet:.1f} s"

    # ---------------------------------------------------------------- reconnect

    def _emit(self, line: str) -> None:
        if self.on_event is None:
            log.warning("%s", line)  # nobody listens: make it visible
        else:
            log.info("%s", line)
            self.on_event(line)

    def _reconnect(self, reason: str) -> None:
        t0 = time.monotonic()
        self.fails_without_answer += 1
        if self.fails_without_answer == 1:  # an outage starts (it ends with the next answer)
            self.failing_since = (time.time(), t0)
        with self.lock:
            self.gen += 1
            self._close(cancel=True)
            for p in self.pending.values():
                p.t_send = p.retry_at = None
        if self.fails_without_answer > _MAX_FAILS_WITHOUT_ANSWER:
            n = self.fails_without_answer
            raise self._unavailable(reason, f"it is up but failed the stream {n} times in a row without an answer")
        self._emit(f"server unreachable ({reason}); reconnecting...")
        served = self.client.model()
        deadline = t0 + self.reconnect_timeout
        delay = 0.1
        while True:
            last = self._ready_or_why(served, deadline)
            if last is None:
                with self.lock:
                    try:
                        self._open()
                    except InferenceServerException as exc:
                        last = f"cannot open a stream: {exc}"
                    else:
                        resend = sorted(self.pending.values(), key=lambda p: p.index)
                        for p in resend:
                            self._send(p)
                        break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                why = f"it did not come back within {self.reconnect_timeout:g} s ({last})"
                raise self._unavailable(reason, why)
            time.sleep(min(delay, remaining))
            delay = min(delay * 1.5, 1.0)
        self.last_answer = time.perf_counter()
        self.client.reconnects += 1
        self._emit(f"reconnected after {time.monotonic() - t0:.1f} s; resending {len(resend)} unanswered windows")

    def _ready_or_why(self, served, deadline: float) -> str | None:
        """None when server and model are ready (and still the same model), else why not."""
        c = self.client
        wait = max(0.1, min(_POLL_TIMEOUT, deadline - time.monotonic()))
        try:
            if not c._client.is_server_ready(client_timeout=wait):
                return "server not ready"
            if not c._client.is_model_ready(c.model_name, client_timeout=wait):
                return f"model '{c.model_name}' not ready"
            now = c.model(refresh=True)
        except InferenceServerException as exc:
            return f"{exc.status() or 'error'}: {exc.message() or exc}"
        except EmotionClientError as exc:
            return str(exc)
        if (now.input_dims, now.labels) != (served.input_dims, served.labels):
            raise EmotionClientError(
                f"the model '{c.model_name}' at {c.url} changed while reconnecting (inputs {served.input_dims} -> "
                f"{now.input_dims}, labels {served.labels} -> {now.labels}): the unanswered windows do not fit it"
            )
        return None

    def _unavailable(self, reason: str, what: str) -> ServerUnavailable:
        since_wall, t0 = self.failing_since
        with self.lock:
            unanswered = sorted(self.pending)
        first = f" (first: window {unanswered[0]})" if unanswered else ""
        since = time.strftime("%H:%M:%S", time.localtime(since_wall))
        return ServerUnavailable(
            f"the server at {self.client.url} is unreachable since {since} ({time.monotonic() - t0:.1f} s): {what}; "
            f"{len(unanswered)} window(s) unanswered{first}; the stream broke with: {reason}. "
            "This is a transport failure, not a bad window.",
            url=self.client.url,
            unanswered=unanswered,
        )
