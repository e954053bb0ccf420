"""The streaming client survives transport failures and keeps refused windows apart from them.

Without a server: a scripted stand-in for tritonclient's InferenceServerClient drives the request-id /
resend / dedupe logic (out-of-order answers, late answers from an abandoned stream, a silent stream,
a server that never comes back). With the REAL embedded Triton: a server stopped and restarted on the
same ports in the middle of a clip, a NaN window in a stream, and a server that is gone for good.

No test here claims a speed. Each wait is for an event or a condition, under a deadline far longer than
the thing waited for (``HANG_S``, or the restart's own stop + start timeouts plus a margin) that only turns
a hang into a failure; what is asserted is the behaviour: every window answered once, in order, with its
own answer.
"""

from __future__ import annotations

import re
import threading
import time
import types

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from avemo.client.grpc_client import EmotionClient, ServerUnavailable, WindowError
from avemo.contract.media import Window
from avemo.contract.tensors import MODALITY_WEIGHTS, PROBS

HANG_S = 60.0  # bounds a hang only: what it bounds takes milliseconds (fakes) or seconds (a real server)
STOP_TIMEOUT = 15.0  # TritonServer.stop: SIGTERM, then SIGKILL after this (and up to 10 s more to reap)
START_TIMEOUT = 120.0  # TritonServer.start: until the server and its model are ready
RESTART_BOUND = STOP_TIMEOUT + 10.0 + START_TIMEOUT + HANG_S  # a restart that takes longer is a hang


class _Background:
    """Runs ``fn`` in a thread; ``join()`` waits for it, re-raises what it raised and returns what it returned.

    The wait is bounded (``deadline``) only so that a hang fails the test instead of blocking it."""

    def __init__(self, fn, what: str = "background action"):
        self.what, self.error, self.result = what, None, None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn):
        try:
            self.result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc

    def join(self, deadline: float = HANG_S):
        self.thread.join(deadline)
        assert not self.thread.is_alive(), f"{self.what} did not finish within {deadline:g} s (a hang)"
        if self.error is not None:
            raise self.error
        return self.result


# ------------------------------------------------------------------------------ scripted stand-in

_FAKE_URL = "127.0.0.1:1"  # nothing listens there: any real network call would fail the test
_FAKE_CONFIG = {
    "name": "emotion",
    "max_batch_size": 8,
    "input": [
        {"name": "audio", "dims": ["100"]},
        {"name": "frames", "dims": ["2", "4", "4", "3"]},
        {"name": "modality_mask", "dims": ["2"]},
    ],
    "output": [{"name": "probs", "dims": ["2"]}, {"name": "modality_weights", "dims": ["2"]}],
    "parameters": {
        k: {"string_value": v}
        for k, v in {"sample_rate": "100", "video_fps": "2", "face_size": "4", "window_seconds": "1.0"}.items()
    },
}


class _Result:
    """An answer whose probs[0] is the value the window carried (so answers can be matched to windows)."""

    def __init__(self, rid: str, value: float):
        self.rid, self.value = rid, value

    def get_response(self):
        return types.SimpleNamespace(id=self.rid)

    def as_numpy(self, name):
        return {PROBS: np.array([[self.value, 1.0]], np.float32), MODALITY_WEIGHTS: np.full((1, 2), 0.5, np.float32)}[
            name
        ]


class FakeTriton:
    """Stands in for InferenceServerClient; ``handler(fake, stream_no, request_id, value)`` scripts the server."""

    def __init__(self, handler, not_ready_polls: int = 0):
        self.handler, self.not_ready_polls = handler, not_ready_polls
        self.callbacks: list = []  # one per start_stream
        self.dead: set[int] = set()
        self.sent: list[tuple[int, str, float]] = []
        self.polls = 0

    def start_stream(self, callback):
        self.callbacks.append(callback)

    def stop_stream(self, cancel_requests=False):
        if cancel_requests and self.callbacks:  # what tritonclient reports for a cancelled stream
            err = InferenceServerException("Locally cancelled by application!", status="StatusCode.CANCELLED")
            self.callbacks[-1](result=None, error=err)

    def async_stream_infer(self, model_name, inputs, request_id="", outputs=None):
        s = len(self.callbacks) - 1
        if s in self.dead:
            raise InferenceServerException("The stream is no longer in valid state")
        value = float(np.frombuffer(inputs[0]._raw_content, np.float32)[0])
        self.sent.append((s, request_id, value))
        self.handler(self, s, request_id, value)

    def answer(self, s: int, rid: str, value: float):
        self.callbacks[s](result=_Result(rid, value), error=None)

    def fail(self, s: int, status: str | None = "StatusCode.UNAVAILABLE", msg: str = "Socket closed"):
        if status is not None:  # a gRPC status ends the stream; an error response does not
            self.dead.add(s)
        self.callbacks[s](result=None, error=InferenceServerException(msg, status=status))

    def is_server_ready(self, client_timeout=None):
        self.polls += 1
        return self.polls > self.not_ready_polls

    def is_model_ready(self, name, client_timeout=None):
        return True

    def get_model_config(self, name, as_json=True, client_timeout=None):
        return {"config": _FAKE_CONFIG}

    def get_model_metadata(self, name, as_json=True, client_timeout=None):
        return {"versions": ["1"]}

    def close(self):
        pass


def _fake_client(fake: FakeTriton, **kwargs) -> tuple[EmotionClient, list[str]]:
    events: list[str] = []
    client = EmotionClient(_FAKE_URL, "emotion", on_event=events.append, **kwargs)
    client._client.close()
    client._client = fake
    return client, events


def _fake_windows(n: int):
    for i in range(n):
        yield Window(
            start=0.5 * i,
            audio=np.full(100, i, np.float32),
            frames=np.zeros((2, 4, 4, 3), np.uint8),
            mask=np.ones(2, np.float32),
            ready_at=time.perf_counter(),
        )


@pytest.mark.parametrize(
    "status, message",
    [
        ("StatusCode.UNAVAILABLE", "Socket closed"),  # the connection broke
        (None, "Request for unknown model: 'emotion' has no available versions"),  # server shutting down
    ],
)
def test_resend_after_transport_failure_drops_late_answers(status, message):
    held, late = [], []

    def server(fake, s, rid, value):
        i = int(value)
        if s == 0 and i < 6:  # answers out of order: 1, 0, 3, 2, 5, 4
            if i % 2 == 0:
                held.append((rid, value))
            else:
                fake.answer(0, rid, value)
                fake.answer(0, *held.pop())
        elif s == 0 and i == 6:
            late.append(rid)
            fake.fail(0, status, message)
        elif s == 0:
            pass  # sent before the client noticed: never answered on the broken stream
        else:
            if late:  # window 6's answer from the abandoned stream turns up after all, wrongly valued
                old = late.pop()
                fake.callbacks[0](result=_Result(old, -1.0), error=None)
                fake.callbacks[1](result=_Result(old, -1.0), error=None)
            fake.answer(s, rid, value)

    fake = FakeTriton(server, not_ready_polls=2)
    client, events = _fake_client(fake, reconnect_timeout=HANG_S)
    results = _Background(lambda: list(client.stream_iter(_fake_windows(12))), "the stream").join()
    assert [r.index for r in results] == list(range(12))
    assert [float(r.probs[0]) for r in results] == list(range(12))  # each answer is its own window's
    assert all(r.error is None and r.lag_ms is not None and r.lag_ms >= r.latency_ms for r in results)
    assert client.reconnects == 1 and fake.polls == 3
    assert ("6.0" in [rid for _, rid, _ in fake.sent]) and (1, "6.1", 6.0) in fake.sent  # resent with a new id
    assert len(events) == 2, events
    assert events[0].startswith(f"server unreachable ({status or 'an error naming no window'}: {message})")
    assert events[0].endswith("; reconnecting...")
    assert re.fullmatch(r"reconnected after \d+\.\d s; resending \d+ unanswered windows", events[1]), events[1]


def test_silent_stream_hits_the_deadline_and_resends():
    def server(fake, s, rid, value):
        if not (s == 0 and value == 3):  # window 3 vanishes on the first stream: no answer, no error
            fake.answer(s, rid, value)

    fake = FakeTriton(server)
    client, events = _fake_client(fake, timeout=0.4)
    # without the deadline the stream would wait for window 3 for ever: HANG_S turns that into a failure
    results = _Background(lambda: list(client.stream_iter(_fake_windows(6))), "the stream").join()
    assert [r.index for r in results] == list(range(6)) and [float(r.probs[0]) for r in results] == list(range(6))
    assert client.reconnects == 1 and len(events) == 2, events
    assert "DEADLINE_EXCEEDED" in events[0] and "no answer for window 3 in" in events[0], events
    quiet = float(re.search(r"no answer for window 3 in (\d+\.\d) s", events[0]).group(1))
    assert quiet >= client.timeout, events  # the stream was given up only once the deadline had passed
    # window 3 went out once on the silent stream, then once more (a new id) on the new one
    assert [(s, rid) for s, rid, v in fake.sent if v == 3] == [(0, "3.0"), (1, "3.1")], fake.sent


def test_refused_window_is_yielded_in_order_without_reconnecting():
    def server(fake, s, rid, value):
        if value == 2:
            err = f"[request_id={rid}] input 'audio' contains 100 non-finite values (NaN or Inf)"
            fake.callbacks[s](result=None, error=InferenceServerException(err))
        else:
            fake.answer(s, rid, value)

    fake = FakeTriton(server)
    client, events = _fake_client(fake)
    results = _Background(lambda: list(client.stream_iter(_fake_windows(5))), "the stream").join()
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert "non-finite" in results[2].error and results[2].probs is None and results[2].modality_weights is None
    assert all(r.error is None and r.probs is not None for i, r in enumerate(results) if i != 2)
    assert client.reconnects == 0 and events == []
    with pytest.raises(WindowError, match=r"window 2 \(start 1\.00 s\).*non-finite") as info:
        _Background(lambda: list(client.stream_iter(_fake_windows(5), raise_on_refused=True)), "the stream").join()
    assert info.value.index == 2


def test_server_that_never_comes_back_raises_server_unavailable():
    def server(fake, s, rid, value):
        if value == 2:
            fake.fail(s)
        elif value < 2:
            fake.answer(s, rid, value)

    fake = FakeTriton(server, not_ready_polls=10**9)
    client, events = _fake_client(fake, reconnect_timeout=0.5)
    got = []

    def stream():
        for r in client.stream_iter(_fake_windows(5)):
            got.append(r.index)

    with pytest.raises(ServerUnavailable) as info:
        _Background(stream, "the stream").join()
    assert got == [0, 1]
    msg = str(info.value)
    assert _FAKE_URL in msg and "transport failure, not a bad window" in msg and "window(s) unanswered" in msg, msg
    assert info.value.unanswered[0] == 2 and not isinstance(info.value, WindowError)
    assert client.reconnects == 0 and len(events) == 1


# ------------------------------------------------------------------------------------ real Triton


def _windows(geo, n: int, seed: int = 3) -> list[Window]:
    """Deterministic windows that the tiny model tells apart (loudness and brightness grow with the index)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        audio = np.clip((0.05 + 0.03 * i) * rng.standard_normal(geo.window_samples), -1, 1).astype(np.float32)  # PCM
        frames = rng.integers(0, 40 + 5 * (i % 40), size=(geo.frames_per_window, 112, 112, 3), dtype=np.uint8)
        out.append(Window(start=i * geo.hop_seconds, audio=audio, frames=frames, mask=np.ones(2, np.float32)))
    return out


def _paced(windows, pause: float, gate: tuple[int, threading.Event] | None = None):
    """Yields ``windows`` ``pause`` s apart (stamped ready as they go). ``gate=(n, event)``: window ``n`` and
    those after it only once ``event`` is set (waited for under a hang bound)."""
    for i, w in enumerate(windows):
        if gate is not None and i == gate[0]:
            assert gate[1].wait(RESTART_BOUND), f"window {i} waited {RESTART_BOUND:g} s for the server's stop"
        yield Window(start=w.start, audio=w.audio, frames=w.frames, mask=w.mask, ready_at=time.perf_counter())
        time.sleep(pause)


def _stream_with_action(client, source, trigger: int, action, what: str, stream_deadline: float):
    """Consume ``client.stream_iter(source)`` (under a hang bound) in the background; after ``trigger`` answers
    start ``action`` in another thread. Whatever happens to the stream, the action is joined and what it
    raised is raised too (chained to the stream's own error, if the stream failed as well).

    Returns (the results the stream yielded, the actions started): the caller asserts on both."""
    results, actions = [], []

    def stream():
        for r in client.stream_iter(source):
            results.append(r)
            if len(results) == trigger:
                actions.append(_Background(action, what))

    try:
        _Background(stream, "the stream").join(stream_deadline)
    finally:
        for a in actions:
            a.join(RESTART_BOUND)
    return results, actions


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])  # graceful: "unknown model" errors; killed: UNAVAILABLE
def test_stream_survives_server_restart_mid_clip(launch_triton, triton_repository, triton_runtime, geo, tmp_path, how):
    srv = launch_triton(triton_repository)
    windows = _windows(geo, 40)
    events: list[str] = []
    # the client waits for the server as long as the restart may take (stop + start timeouts and a margin):
    # a slow restart is not a failure; only a restart that never ends is
    client = EmotionClient(srv.url, timeout=HANG_S, reconnect_timeout=RESTART_BOUND, on_event=events.append)
    restarted = []
    stopped = threading.Event()  # the old server's stop is over (set even if it failed: the test goes on)

    def restart():  # independent of the client, as an operator's restart would be
        try:
            if how == "sigkill":
                srv.process.kill()
            srv.stop(timeout=STOP_TIMEOUT)
        finally:
            stopped.set()
        new = triton_runtime.TritonServer(srv.model_repository, ports=srv.ports, log_file=tmp_path / "restarted.log")
        restarted.append(new)
        new.start(timeout=START_TIMEOUT)

    # windows 20.. are produced only once the old server is gone: the stream cannot finish without reconnecting
    source = _paced(windows, 0.1, gate=(20, stopped))
    try:
        results, actions = _stream_with_action(client, source, 10, restart, "the restart", 2 * RESTART_BOUND)
        ref, _ = client.infer(  # one-shot answers of the restarted server, window by window
            np.stack([w.audio for w in windows]),
            np.stack([w.frames for w in windows]),
            np.stack([w.mask for w in windows]),
        )
    finally:
        for s in restarted:
            s.stop()
        client.close()
    assert len(actions) == 1 and len(restarted) == 1 and not srv.is_running()  # restarted mid-clip, once
    assert [r.index for r in results] == list(range(40))  # none lost, none twice, in order
    assert [r.error for r in results] == [None] * 40
    assert client.reconnects >= 1, events
    assert any("reconnecting" in e for e in events) and any(e.startswith("reconnected after") for e in events), events
    if how == "sigkill":  # the connection itself broke
        assert "StatusCode.UNAVAILABLE" in events[0], events
    got = np.stack([r.probs for r in results])
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)  # every answer belongs to its own window
    assert np.abs(np.diff(ref, axis=0)).max(axis=1).min() > 1e-4  # ...and the windows are told apart
    assert all(r.lag_ms is not None and r.lag_ms >= r.latency_ms - 1e-6 for r in results)


@pytest.mark.slow
def test_refused_window_reported_and_the_others_answered(triton_server, geo):
    windows = _windows(geo, 9)
    windows[4].audio[:] = np.nan
    client = EmotionClient(triton_server.url, timeout=30)
    try:
        results = client.stream(_paced(windows, 0.0))
        ok = [w for i, w in enumerate(windows) if i != 4]
        ref, _ = client.infer(
            np.stack([w.audio for w in ok]), np.stack([w.frames for w in ok]), np.stack([w.mask for w in ok])
        )
    finally:
        client.close()
    assert [r.index for r in results] == list(range(9))
    bad = results[4]
    assert bad.probs is None and bad.modality_weights is None and bad.start == windows[4].start
    assert "'audio'" in bad.error and "non-finite" in bad.error, bad.error
    others = [r for r in results if r.index != 4]
    assert all(r.error is None for r in others)
    np.testing.assert_allclose(np.stack([r.probs for r in others]), ref, atol=1e-5, rtol=0)
    assert client.reconnects == 0


@pytest.mark.slow
def test_server_gone_for_good_raises_server_unavailable(launch_triton, triton_repository, geo):
    srv = launch_triton(triton_repository)
    events: list[str] = []
    give_up = 3.0  # reconnect_timeout, the behaviour under test: the server never comes back, so no race
    client = EmotionClient(srv.url, timeout=HANG_S, reconnect_timeout=give_up, on_event=events.append)
    gone = threading.Event()  # the stop is over (set even if it failed: the test goes on)

    def stop():
        try:
            srv.stop(timeout=STOP_TIMEOUT)
        finally:
            gone.set()

    # windows 10.. only once the server is gone: the stream cannot end without meeting the outage
    source = _paced(_windows(geo, 100), 0.1, gate=(10, gone))
    try:
        with pytest.raises(ServerUnavailable) as info:
            _stream_with_action(client, source, 5, stop, "stopping the server", RESTART_BOUND)
    finally:
        client.close()
    assert gone.is_set() and not srv.is_running()
    msg = str(info.value)
    assert not isinstance(info.value, WindowError)
    assert srv.url in msg and "unreachable" in msg and "transport failure, not a bad window" in msg, msg
    assert f"did not come back within {give_up:g} s" in msg and info.value.unanswered, msg
    outage = float(re.search(r"unreachable since \S+ \((\d+\.\d) s\)", msg).group(1))
    assert outage >= give_up, msg  # it gave up only after waiting the whole reconnect_timeout
    assert any("reconnecting" in e for e in events) and client.reconnects == 0
