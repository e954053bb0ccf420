"""Overload gives a fast, clear "busy" answer: the bounded queue in every batched config, busy answers retried
with jittered backoff (one-shot and streamed), windows beyond a live lag budget shed, late answers marked.

Without a server: a scripted stand-in for tritonclient's InferenceServerClient drives the stream. With the
REAL embedded Triton: a queue of 1 under a burst (every window still answered, busy answers counted), a
live stream whose budget cannot be met (shed, not queued), and Triton's queue timeout naming its request.
"""

from __future__ import annotations

import functools
import random
import threading
import time
import types

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from avemo.client import busy as busy_mod
from avemo.client import grpc_client
from avemo.client.grpc_client import EmotionClient, ServerBusy
from avemo.contract.endpoint import BUSY_RETRIES, MAX_QUEUE_SIZE, QUEUE_TIMEOUT_US
from avemo.contract.media import Window
from avemo.contract.tensors import MODALITY_WEIGHTS, PROBS

_FAKE_URL = "127.0.0.1:1"  # nothing listens there: any real network call would fail the test
_CONFIG = {
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
_BUSY = "Exceeds maximum queue size"


class _Result:
    def __init__(self, rid: str, value: float):
        self.rid, self.value = rid, value

    def get_response(self):
        return types.SimpleNamespace(id=self.rid)

    def as_numpy(self, name):
        out = {PROBS: np.array([[self.value, 1.0]], np.float32), MODALITY_WEIGHTS: np.full((1, 2), 0.5, np.float32)}
        return out[name]


class _Fake:
    """Stands in for InferenceServerClient; ``handler(fake, request_id, value, timeout_us)`` scripts the server."""

    def __init__(self, handler):
        self.handler = handler
        self.callback = None
        self.sent: list[tuple[str, float, int | None]] = []
        self.unary_calls = 0

    def start_stream(self, callback):
        self.callback = callback

    def stop_stream(self, cancel_requests=False):
        pass

    def async_stream_infer(self, model_name, inputs, request_id="", outputs=None, timeout=None):
        value = float(np.frombuffer(inputs[0]._raw_content, np.float32)[0])
        self.sent.append((request_id, value, timeout))
        self.handler(self, request_id, value, timeout)

    def answer(self, rid, value):
        self.callback(result=_Result(rid, value), error=None)

    def busy(self, rid):
        self.callback(result=None, error=InferenceServerException(f"[request id: {rid}] {_BUSY}"))

    def infer(self, model_name, inputs, outputs=None, client_timeout=None):
        self.unary_calls += 1
        return self.handler(self, "", float(np.frombuffer(inputs[0]._raw_content, np.float32)[0]), None)

    def is_server_ready(self, client_timeout=None):
        return True

    def is_model_ready(self, name, client_timeout=None):
        return True

    def get_model_config(self, name, as_json=True, client_timeout=None):
        return {"config": _CONFIG}

    def get_model_metadata(self, name, as_json=True, client_timeout=None):
        return {"versions": ["1"]}

    def close(self):
        pass


def _client(fake) -> tuple[EmotionClient, list[str]]:
    events: list[str] = []
    client = EmotionClient(_FAKE_URL, "emotion", on_event=events.append)
    client._client.close()
    client._client = fake
    return client, events


def _windows(n: int, ready_at=None):
    for i in range(n):
        yield Window(
            start=float(i),
            audio=np.full(100, i, np.float32),
            frames=np.zeros((2, 4, 4, 3), np.uint8),
            mask=np.ones(2, np.float32),
            ready_at=ready_at() if ready_at else None,
        )


# ------------------------------------------------------------------------------ backoff and one-shot calls


def test_backoff_is_jittered_and_capped():
    rng = random.Random(0)
    waits = [[busy_mod.backoff(a, rng, first=0.05, cap=1.0) for _ in range(200)] for a in (1, 2, 3, 6, 12)]
    assert all(0 <= w <= 0.05 for w in waits[0]) and max(waits[0]) > 0.04  # [0, 0.05]
    assert all(0 <= w <= 0.1 for w in waits[1]) and max(waits[1]) > 0.08  # the ceiling doubles
    assert max(waits[3]) <= 1.0 and max(waits[4]) <= 1.0 and max(waits[4]) > 0.9  # capped at 1 s
    assert len({round(w, 6) for w in waits[2]}) > 150  # random, not one fixed delay for every client


def test_retry_busy_retries_only_busy_answers():
    slept, calls = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise InferenceServerException(f"[request id: 7] {_BUSY}", status="StatusCode.UNAVAILABLE")
        return "ok"

    assert busy_mod.retry_busy(flaky, sleep=slept.append, rng=random.Random(1)) == "ok"
    assert len(calls) == 3 and len(slept) == 2

    def refused():
        raise InferenceServerException("input 'audio' contains NaN", status="StatusCode.INVALID_ARGUMENT")

    with pytest.raises(InferenceServerException, match="NaN"):
        busy_mod.retry_busy(refused, sleep=slept.append)
    assert len(slept) == 2  # a refusal is not retried


def test_one_shot_infer_retries_busy_then_raises_server_busy(monkeypatch):
    monkeypatch.setattr(grpc_client, "retry_busy", functools.partial(busy_mod.retry_busy, sleep=lambda s: None))
    answers = iter([_BUSY, _BUSY, "ok"])

    def server(fake, rid, value, timeout):
        if next(answers) == _BUSY:
            raise InferenceServerException(f"[request id: ] {_BUSY}", status="StatusCode.UNAVAILABLE")
        return _Result("", value)

    client, _ = _client(_Fake(server))
    w = next(_windows(1))
    probs, _ = client.infer(w.audio, w.frames, w.mask)
    assert probs.shape == (1, 2) and client.busy_retries == 2 and client._client.unary_calls == 3

    def always_busy(fake, rid, value, timeout):
        raise InferenceServerException(f"[request id: ] {_BUSY}", status="StatusCode.UNAVAILABLE")

    client, _ = _client(_Fake(always_busy))
    with pytest.raises(ServerBusy, match=rf"still busy after {BUSY_RETRIES} retries"):
        client.infer(w.audio, w.frames, w.mask)
    assert client._client.unary_calls == BUSY_RETRIES + 1


# ------------------------------------------------------------------------------ streams (scripted server)


def test_busy_window_is_resent_after_a_backoff_and_answered_once():
    tries = {}

    def server(fake, rid, value, timeout):
        tries[value] = tries.get(value, 0) + 1
        if value == 2 and tries[value] <= 2:  # window 2 is refused busy twice
            fake.busy(rid)
        else:
            fake.answer(rid, value)

    fake = _Fake(server)
    client, events = _client(fake)
    results = list(client.stream_iter(_windows(5)))
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert [float(r.probs[0]) for r in results] == [0, 1, 2, 3, 4] and all(r.error is None for r in results)
    assert results[2].busy == 2 and sum(r.busy for r in results) == 2
    assert [rid for rid, v, _ in fake.sent if v == 2] == ["2.0", "2.0.1", "2.0.2"]  # each resend its own id
    assert client.reconnects == 0 and events == []  # busy is not a transport failure
    assert all(t is None for _, _, t in fake.sent)  # no budget: no per-request queue timeout


def test_lag_budget_sheds_a_window_that_stays_busy_and_keeps_the_others():
    def server(fake, rid, value, timeout):
        fake.busy(rid) if value == 1 else fake.answer(rid, value)

    fake = _Fake(server)
    client, _ = _client(fake)
    t0 = time.perf_counter()
    # 2 s: the windows the fake answers at once could only miss it by a 2 s stall of the machine
    results = list(client.stream_iter(_windows(4, ready_at=time.perf_counter), lag_budget=2.0))
    assert [r.index for r in results] == [0, 1, 2, 3]
    shed = results[1]
    assert shed.shed and shed.probs is None and shed.error.startswith("shed: ") and shed.busy >= 1
    assert all(r.error is None and not r.shed for i, r in enumerate(results) if i != 1)
    assert time.perf_counter() - t0 < 60  # a hang bound: window 1 is given up at its budget, not retried for ever
    budgets = [t for _, _, t in fake.sent]
    assert all(t is not None and 0 < t <= 2_000_000 for t in budgets)  # the rest of the budget, in us


def test_window_already_past_the_budget_is_shed_without_a_request():
    def server(fake, rid, value, timeout):
        fake.answer(rid, value)

    fake = _Fake(server)
    client, _ = _client(fake)
    stale = [time.perf_counter() - 5.0]  # the first window's media is 5 s old: a client that fell behind
    results = list(
        client.stream_iter(_windows(3, ready_at=lambda: stale.pop() if stale else time.perf_counter()), lag_budget=1.0)
    )
    assert results[0].shed and results[0].lag_ms >= 5000 and "before sending" in results[0].error
    assert [v for _, v, _ in fake.sent] == [1.0, 2.0]  # never sent
    assert all(r.probs is not None for r in results[1:])


def test_answer_after_the_budget_is_marked_late():
    def server(fake, rid, value, timeout):
        if value == 1:
            time.sleep(0.25)
        fake.answer(rid, value)

    client, _ = _client(_Fake(server))
    results = list(client.stream_iter(_windows(3, ready_at=time.perf_counter), lag_budget=0.2))
    assert [r.late for r in results] == [False, True, False]
    assert results[1].probs is not None and results[1].lag_ms > 200


# ------------------------------------------------------------------------------ config


def test_every_batched_config_bounds_its_queue(triton_repository, served_model_name):
    text = (triton_repository / served_model_name / "config.pbtxt").read_text()
    assert "default_queue_policy {" in text and "timeout_action: REJECT" in text
    assert f"max_queue_size: {MAX_QUEUE_SIZE}" in text
    assert f"default_timeout_microseconds: {QUEUE_TIMEOUT_US}" in text and "allow_timeout_override: true" in text


# ------------------------------------------------------------------------------ real Triton


@pytest.fixture(scope="module")
def small_queue_repository(tmp_path_factory, tiny_onnx, geo, serving_labels, served_model_name):
    """The tiny model with a queue of 1 and batches of 1: a burst overflows it at once."""
    from avemo.export.triton_repo import write_model_repository

    repo = tmp_path_factory.mktemp("small_queue") / "model_repository"
    write_model_repository(
        repo,
        served_model_name,
        tiny_onnx,
        serving_labels,
        geo,
        max_batch_size=1,
        preferred_batch_sizes=(),
        max_queue_size=1,
    )
    return repo


def _real_windows(geo, n: int, ready_at=None) -> list[Window]:
    rng = np.random.default_rng(0)
    return [
        Window(
            start=float(i),
            audio=np.clip(0.1 * rng.standard_normal(geo.window_samples), -1, 1).astype(np.float32),
            frames=rng.integers(0, 255, (geo.frames_per_window, 112, 112, 3), dtype=np.uint8),
            mask=np.ones(2, np.float32),
            ready_at=ready_at,
        )
        for i in range(n)
    ]


@pytest.mark.slow
def test_full_queue_answers_busy_and_every_streamed_window_is_still_answered(
    launch_triton, small_queue_repository, served_model_name, geo
):
    server = launch_triton(small_queue_repository)
    windows = _real_windows(geo, 30)
    with EmotionClient(server.url, served_model_name) as client:
        expected, _ = client.infer(
            np.stack([w.audio for w in windows]),
            np.stack([w.frames for w in windows]),
            np.stack([w.mask for w in windows]),
        )
    got: dict[int, list] = {}

    def stream(k: int) -> None:  # 6 streams at once, each sending its 30 windows as fast as it can
        with EmotionClient(server.url, served_model_name) as c:
            got[k] = list(c.stream_iter(windows, max_in_flight=30))
            assert c.reconnects == 0

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(got) == list(range(6))
    for results in got.values():
        assert [r.index for r in results] == list(range(30)) and all(r.error is None for r in results)
        np.testing.assert_allclose(np.stack([r.probs for r in results]), expected, atol=1e-6)
    assert sum(r.busy for results in got.values() for r in results) > 0  # a queue of 1 overflowed: busy answers


@pytest.mark.slow
def test_live_stream_over_its_budget_is_shed_not_queued(launch_triton, small_queue_repository, served_model_name, geo):
    """Which windows are over the budget is set by construction, not by the machine's speed: every other window's
    media became ready 100 s ago (far past the 30 s budget), the rest just now (30 s only bounds a hang). The
    late ones are dropped without a request; the others are all answered; the server keeps serving."""
    import tritonclient.grpc as grpcclient

    server = launch_triton(small_queue_repository)
    now = time.perf_counter()
    windows = _real_windows(geo, 40)
    for w in windows:
        w.ready_at = now - 100.0 if w.start % 2 == 0 else now
    stats = grpcclient.InferenceServerClient(server.url)

    def served_requests() -> int:
        (model,) = stats.get_inference_statistics(served_model_name).model_stats
        return int(model.inference_stats.success.count)

    before = served_requests()
    with EmotionClient(server.url, served_model_name) as client:
        results = list(client.stream_iter(windows, max_in_flight=40, lag_budget=30.0))
        assert client.is_ready()  # the server keeps serving
    assert [r.index for r in results] == list(range(40))
    assert [r.index for r in results if r.shed] == list(range(0, 40, 2))  # exactly the late ones
    assert all("before sending" in r.error for r in results if r.shed)
    assert [r.index for r in results if r.error is None] == list(range(1, 40, 2))
    assert all(r.lag_ms is not None and r.lag_ms >= 100_000 for r in results if r.shed)
    # the late windows never reached the server: it served the 20 on time only (its statistics may be
    # recorded a moment after the answer, so wait for them, bounded)
    deadline = time.monotonic() + 60
    while served_requests() - before < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served_requests() - before == 20


@pytest.mark.slow
def test_queue_timeout_names_its_request_on_a_stream(triton_server, served_model_name, geo):
    """Triton's "Request timeout expired" carries no id in its text; the client puts the response's id there."""
    import tritonclient.grpc as grpcclient

    w = _real_windows(geo, 1)[0]
    errors: list[str] = []
    done = threading.Event()
    client = grpcclient.InferenceServerClient(triton_server.url)

    def callback(result=None, error=None):
        if error is not None:
            errors.append(error.message())
        if len(errors) >= 1:
            done.set()

    client.start_stream(callback=callback)
    try:
        for i in range(30):
            inputs = EmotionClient._inputs(w.audio[None], w.frames[None], w.mask[None])
            client.async_stream_infer(served_model_name, inputs, request_id=f"{i}.0", timeout=1)
        done.wait(30)
    finally:
        client.stop_stream()
        client.close()
    timeouts = [e for e in errors if "Request timeout expired" in e]
    assert timeouts, errors
    assert all(e.startswith("[request id: ") for e in timeouts), timeouts


def test_clip_summary_counts_shed_and_late_windows_apart_from_refused():
    from avemo.client.grpc_stream import WindowResult
    from avemo.client.predict import format_summary, format_window, summarise, window_entry

    labels = ["calm", "angry"]
    probs, weights = np.array([0.2, 0.8], np.float32), np.array([0.5, 0.5], np.float32)
    results = [
        WindowResult(0, 0.0, probs, weights, 5.0, lag_ms=120.0),
        WindowResult(1, 0.5, None, None, float("nan"), error="shed: server busy", lag_ms=900.0, shed=True),
        WindowResult(2, 1.0, probs, weights, 5.0, lag_ms=1700.0, late=True),
        WindowResult(3, 1.5, None, None, 4.0, error="[request id: 3.0] input 'audio' contains NaN"),
    ]
    rows = [window_entry(r, labels, 1.0, r.probs) for r in results]
    pred = summarise("clip.mp4", rows, labels, duration=2.5)
    assert (pred["windows"], pred["refused"], pred["shed"], pred["late"]) == (4, 1, 1, 1)
    assert pred["label"] == "angry"  # from the two answered windows only
    assert "4 windows (1 refused, 1 shed, 1 late)" in format_summary(pred)
    assert format_window(rows[1]).strip().endswith("dropped (server busy)")


def test_stream_errors_get_their_request_id_only_when_busy():
    """A busy answer is matched to its window; "unknown model" while the server shuts down must stay nameless,
    so the stream treats it as a transport failure and reconnects (not as a refusal of that window)."""

    def response(msg: str, rid: str):
        return types.SimpleNamespace(error_message=msg, infer_response=types.SimpleNamespace(id=rid))

    raw = [
        response("Request timeout expired", "4.0"),
        response("Request for unknown model: 'emotion' has no available versions", "5.0"),
        response("[request id: 6.0] Exceeds maximum queue size", "6.0"),
    ]
    out = [r.error_message for r in busy_mod._IdTaggedResponses(iter(raw))]
    assert out == [
        "[request id: 4.0] Request timeout expired",
        "Request for unknown model: 'emotion' has no available versions",
        "[request id: 6.0] Exceeds maximum queue size",
    ]
