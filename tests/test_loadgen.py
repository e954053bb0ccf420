"""Load generation and system shared memory: `avemo loadgen`, EmotionClient(shared_memory=True) and
benchmarks/serving.py.

Without a server: the shared-memory layout, a round trip through real POSIX shared memory against a fake
server that maps the regions by their keys (as Triton does), the registration failure message, the
closed loop against a fake client, the result types and the CLI parser. With the real embedded server
(slow): shm answers equal plain gRPC answers, every loadgen run ends with 0 errors and accounts for every
window, and the serving benchmark's ``--quick`` run writes every figure and judges each ratio by its target.

No test here claims a speed (that is what benchmarks/serving.py reports): the counts asserted are the ones
the code fixes (a schedule, a fake's script), and the figures a run reports are checked against each other.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from multiprocessing import shared_memory as mpshm

import numpy as np
import pytest

from avemo.contract.tensors import AUDIO, FRAMES, MODALITY_MASK, MODALITY_WEIGHTS, PROBS


def _served(geo, labels, max_batch_size=8):
    from avemo.client.grpc_client import ServedModel

    dims = {AUDIO: (geo.window_samples,), FRAMES: (geo.frames_per_window, 112, 112, 3), MODALITY_MASK: (2,)}
    return ServedModel("emotion", "1", list(labels), geo, dims, max_batch_size)


def _batch(geo, n, seed=0):
    rng = np.random.default_rng(seed)
    audio = np.clip(0.3 * rng.standard_normal((n, geo.window_samples)), -1, 1).astype(np.float32)
    frames = rng.integers(0, 256, (n, geo.frames_per_window, 112, 112, 3), dtype=np.uint8)
    mask = np.ones((n, 2), np.float32)
    mask[::3, 1] = 0
    return audio, frames, mask


class _FakeShmServer:
    """The tritonclient calls EmotionClient makes with shared memory, answered the way Triton would: regions
    are mapped by their keys; infer reads the inputs from them and writes probs = softmax of a few statistics
    and modality_weights = mask / sum into the output region."""

    def __init__(self, num_classes: int, refuse: str | None = None) -> None:
        self.num_classes, self.refuse = num_classes, refuse
        self.regions: dict[str, mpshm.SharedMemory] = {}
        self.unregistered: list[str] = []
        self.batches: list[int] = []

    def register_system_shared_memory(self, name, key, byte_size, client_timeout=None):
        from tritonclient.utils import InferenceServerException

        if self.refuse:
            raise InferenceServerException(self.refuse, status="StatusCode.INTERNAL")
        self.regions[name] = mpshm.SharedMemory(key)  # opened by key, as the server process would
        assert self.regions[name].size >= byte_size

    def unregister_system_shared_memory(self, name, client_timeout=None):
        self.unregistered.append(name)
        self.regions.pop(name).close()

    @staticmethod
    def expected(audio, frames, mask, num_classes):
        stats = np.stack([audio.mean(1), np.abs(audio).mean(1), frames.mean((1, 2, 3, 4)) / 255.0], 1)
        logits = stats @ np.linspace(-1, 1, 3 * num_classes).reshape(3, num_classes)
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return probs.astype(np.float32), (mask / np.maximum(mask.sum(1, keepdims=True), 1)).astype(np.float32)

    def infer(self, model_name, inputs, outputs=None, client_timeout=None):
        dtypes = {"FP32": np.float32, "UINT8": np.uint8}

        def where(t):
            p = t.parameters
            return self.regions[p["shared_memory_region"].string_param], p["shared_memory_offset"].int64_param

        arrays = {}
        for inp in inputs:
            t = inp._input
            assert not t.HasField("contents") and inp._raw_content is None, "data went into the message"
            region, offset = where(t)
            arrays[t.name] = np.ndarray(list(t.shape), dtypes[t.datatype], buffer=region.buf[offset:]).copy()
        n = len(arrays[AUDIO])
        self.batches.append(n)
        probs, weights = self.expected(arrays[AUDIO], arrays[FRAMES], arrays[MODALITY_MASK], self.num_classes)
        shapes = {}
        for out in outputs:
            t = out._output
            region, offset = where(t)
            value = {PROBS: probs, MODALITY_WEIGHTS: weights}[t.name]
            assert t.parameters["shared_memory_byte_size"].int64_param == value.nbytes
            np.ndarray(value.shape, np.float32, buffer=region.buf[offset:])[:] = value
            shapes[t.name] = value.shape

        class Result:
            def get_output(self, name):
                return type("Output", (), {"shape": list(shapes[name])})()

            def as_numpy(self, name):
                return None  # outputs in shared memory are not in the response

        return Result()

    def close(self):
        pass


@pytest.fixture
def shm_client(geo, serving_labels):
    from avemo.client.grpc_client import EmotionClient

    def make(refuse=None):
        client = EmotionClient("127.0.0.1:1", shared_memory=True)
        client._served = _served(geo, serving_labels)
        client._client = _FakeShmServer(len(serving_labels), refuse)
        made.append(client)
        return client

    made = []
    yield make
    for c in made:
        c.close()


# ------------------------------------------------------------------------------ shared memory, no server


def test_shm_layout_holds_max_batch_of_every_tensor(geo, serving_labels):
    from avemo.client.grpc_client import shm_layout

    lay = shm_layout(_served(geo, serving_labels, max_batch_size=8))
    assert lay.capacity == 8
    assert lay.per_window == {
        AUDIO: 16000 * 4,
        FRAMES: 8 * 112 * 112 * 3,
        MODALITY_MASK: 8,
        PROBS: 16,
        MODALITY_WEIGHTS: 8,
    }
    for names, total in (
        ((AUDIO, FRAMES, MODALITY_MASK), lay.input_bytes),
        ((PROBS, MODALITY_WEIGHTS), lay.output_bytes),
    ):
        spans = sorted((lay.offsets[n], lay.offsets[n] + 8 * lay.per_window[n]) for n in names)
        assert spans[0][0] == 0 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # no overlap
        assert spans[-1][1] <= total and all(lay.offsets[n] % 64 == 0 for n in names)
    assert shm_layout(_served(geo, serving_labels, max_batch_size=0)).capacity == 1


def test_shm_infer_round_trip_per_thread_regions_and_close(shm_client, geo, serving_labels):
    import tritonclient.utils.shared_memory as sysshm

    client = shm_client()
    fake = client._client
    audio, frames, mask = _batch(geo, 11)
    probs, weights = client.infer(audio, frames, mask)  # 11 windows > max_batch_size 8: two requests
    want_p, want_w = fake.expected(audio, frames, mask, len(serving_labels))
    np.testing.assert_allclose(probs, want_p, rtol=1e-6)
    np.testing.assert_array_equal(weights, want_w)
    assert fake.batches == [8, 3] and len(fake.regions) == 2
    p1, _ = client.infer(audio[4], frames[4], mask[4])  # one window, same regions
    np.testing.assert_allclose(p1[0], want_p[4], rtol=1e-6)
    assert len(fake.regions) == 2

    other = []  # a second thread gets regions of its own
    t = threading.Thread(target=lambda: other.append(client.infer(audio[:2], frames[:2], mask[:2])))
    t.start()
    t.join()
    np.testing.assert_allclose(other[0][0], want_p[:2], rtol=1e-6)
    assert len(fake.regions) == 4 and len(set(fake.regions)) == 4

    names = set(fake.regions)
    keys = {"/" + n for n in names}
    assert keys <= set(sysshm.mapped_shared_memory_regions())
    client.close()
    assert sorted(fake.unregistered) == sorted(names) and not fake.regions
    assert not keys & set(sysshm.mapped_shared_memory_regions())
    for name in names:  # destroyed: the keys are gone from /dev/shm
        with pytest.raises(FileNotFoundError):
            mpshm.SharedMemory("/" + name)


def test_shm_registration_failure_says_the_server_must_be_on_this_host(shm_client, geo):
    import tritonclient.utils.shared_memory as sysshm

    from avemo.client.grpc_client import EmotionClientError

    before = set(sysshm.mapped_shared_memory_regions())
    client = shm_client(refuse="Unable to open shared memory region: '/avemo_x_in'")
    audio, frames, mask = _batch(geo, 1)
    with pytest.raises(EmotionClientError, match="on this host") as info:
        client.infer(audio, frames, mask)
    assert "Unable to open shared memory region" in str(info.value) and "shared_memory=False" in str(info.value)
    assert set(sysshm.mapped_shared_memory_regions()) == before  # nothing left behind


# ------------------------------------------------------------------------------ loadgen, no server


def test_results_windows_and_server_split(geo, serving_labels):
    from avemo.client.loadgen import ConcurrencyResult, Latency, make_windows, server_split

    lat = Latency.of([float(x) for x in range(1, 101)])
    assert (lat.count, lat.p50, lat.max) == (100, 50.5, 100.0) and 95 < lat.p95 < lat.p99 < 100
    assert Latency.of([]) is None
    before = {"requests": 10, "executions": 5, "queue_ns": 0, "compute_input_ns": 0, "compute_infer_ns": 0}
    before["compute_output_ns"] = 0
    after = dict(before, requests=30, executions=10, queue_ns=40_000, compute_infer_ns=2_000_000)
    split = server_split(before, after)
    assert (split.requests, split.executions, split.mean_batch) == (20, 5, 4.0)
    assert (split.queue_us, split.compute_infer_us, split.compute_input_us) == (2.0, 100.0, 0.0)
    r = ConcurrencyResult("emotion", 4, 1.0, False, 20, 0, latency_ms=lat, throughput=20.0, server=split)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["latency_ms"]["p50"] == 50.5 and d["server"]["mean_batch"] == 4.0

    ws = make_windows(_served(geo, serving_labels), n=3)
    assert len(ws) == 3 and not np.array_equal(ws[0].audio, ws[1].audio)
    for w in ws:
        assert w.audio.shape == (geo.window_samples,) and w.audio.dtype == np.float32 and np.abs(w.audio).max() <= 1
        assert w.frames.shape == (geo.frames_per_window, 112, 112, 3) and w.frames.dtype == np.uint8
        assert w.mask.tolist() == [1.0, 1.0]


class _VirtualTime:
    """Stands in for the ``time`` module inside client/loadgen.py: ``perf_counter`` is a clock that only the
    fake client's work (and loadgen's own ``sleep``) moves, so what a run counts depends on its script, not
    on how fast (or how loaded) this machine is."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.start = self.now = 1000.0

    def perf_counter(self) -> float:
        with self.lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += max(0.0, seconds)


def _bounded(fn, deadline: float = 60.0):
    """``fn()`` in a thread, waited for at most ``deadline`` s: a bound on a hang, not on the speed."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(deadline)
    assert not t.is_alive(), f"did not finish within {deadline:g} s (a hang)"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_closed_loop_counts_answers_and_errors(geo, serving_labels, monkeypatch):
    """run_concurrency with a fake client: every third request fails; one client per worker, each closed.

    The run's clock is virtual (a request takes 5 ms of it, a failure's pause 10 ms): the loop must go on
    until ``duration`` of it has passed, and every request is counted once, as answered or as failed."""
    from avemo.client import grpc_client, loadgen

    clock = _VirtualTime()
    made = []

    class FakeClient:
        def __init__(self, url, model, timeout=30.0, shared_memory=False):
            self.calls, self.closed, self.shm = 0, False, shared_memory
            made.append(self)

        def model(self):
            return _served(geo, serving_labels)

        def infer(self, audio, frames, mask):
            self.calls += 1
            clock.sleep(0.005)
            if self.calls % 3 == 0:
                raise grpc_client.EmotionClientError("inference failed on 'emotion': boom")
            return np.full((1, 4), 0.25, np.float32), np.full((1, 2), 0.5, np.float32)

        def close(self):
            self.closed = True

    monkeypatch.setattr(grpc_client, "EmotionClient", FakeClient)
    monkeypatch.setattr(loadgen, "time", clock)
    duration = 0.3
    r = _bounded(lambda: loadgen.run_concurrency("127.0.0.1:1", "emotion", 3, duration, shared_memory=True))
    assert len(made) == 3 and all(c.closed and c.shm for c in made)
    # each client: one untimed request (call 1, answered), then timed ones; its calls 3, 6, 9, ... failed
    assert r.errors == sum(c.calls // 3 for c in made) and r.errors > 0
    assert r.requests == sum(c.calls - 1 - c.calls // 3 for c in made) and r.requests > 0
    assert r.error_messages == ["EmotionClientError: inference failed on 'emotion': boom"]
    # the loop ran until `duration` had passed: 5 ms a request, 10 ms more a failure, after 3 untimed requests
    spent = clock.now - clock.start
    timed = r.requests + r.errors
    assert spent == pytest.approx(0.005 * (3 + timed) + 0.01 * r.errors) and spent >= duration
    assert timed >= duration / 0.015  # hence at least this many timed requests
    # the figures agree with each other: every answer has a latency (>= its own 5 ms), within the run
    assert r.latency_ms.count == r.requests and r.latency_ms.p50 >= 5.0 - 1e-6
    assert 0 < r.duration_s <= spent and r.throughput == pytest.approx(r.requests / r.duration_s)
    assert r.server is None  # no server to read statistics from


def test_loadgen_cli_parser():
    from avemo.cli import build_parser

    args = build_parser("loadgen").parse_args(["loadgen", "--concurrency", "1,0,4", "--shm", "--streams", "2"])
    assert args.concurrency == [1, 4] and args.shm and args.streams == 2 and args.pace == "realtime"
    args = build_parser("loadgen").parse_args(["loadgen"])
    assert args.concurrency == [1, 4, 8, 16] and args.streams == 16 and not args.json
    with pytest.raises(SystemExit):
        build_parser("loadgen").parse_args(["loadgen", "--concurrency", "a,b"])


# ------------------------------------------------------------------------------ real server


@pytest.mark.slow
def test_shm_infer_equals_plain_infer_on_real_server(triton_server, geo, served_model_name):
    import tritonclient.grpc as grpcclient

    from avemo.client.grpc_client import EmotionClient

    raw = grpcclient.InferenceServerClient(triton_server.url)
    audio, frames, mask = _batch(geo, 11, seed=3)
    with EmotionClient(triton_server.url, served_model_name) as plain:
        want_p, want_w = plain.infer(audio, frames, mask)
    shm = EmotionClient(triton_server.url, served_model_name, shared_memory=True)
    try:
        got_p, got_w = shm.infer(audio, frames, mask)
        assert len(raw.get_system_shared_memory_status(as_json=True).get("regions", {})) == 2
        one_p, _ = shm.infer(audio[5], frames[5], mask[5])
    finally:
        shm.close()
    np.testing.assert_allclose(got_p, want_p, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got_w, want_w, atol=1e-6, rtol=0)
    np.testing.assert_allclose(one_p[0], want_p[5], atol=1e-6, rtol=0)
    assert got_p.shape == (11, 4) and not np.allclose(got_p[0], got_p[1])
    assert raw.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}  # unregistered on close
    raw.close()


@pytest.mark.slow
def test_loadgen_runs_have_no_errors_on_real_server(triton_server, served_model_name, capsys):
    from avemo.cli import main
    from avemo.client.loadgen import run_concurrency, run_streams

    url = triton_server.url
    for shm in (False, True):
        r = run_concurrency(url, served_model_name, 2, 0.8, shared_memory=shm)
        assert r.errors == 0 and r.error_messages == [] and r.requests > 0, r
        assert r.latency_ms.count == r.requests and 0 < r.latency_ms.p50 <= r.latency_ms.max
        assert r.duration_s > 0 and r.throughput == pytest.approx(r.requests / r.duration_s)
        assert r.server is not None and r.server.requests >= r.requests and r.server.compute_infer_us > 0
    s = run_streams(url, served_model_name, 3, 1.0, pace="max")
    _assert_every_window_answered_once(s)
    assert s.sent >= 3  # each stream sends its first window at the start
    s = run_streams(url, served_model_name, 2, 1.2, pace="realtime")
    _assert_every_window_answered_once(s)
    # the schedule fixes how many windows there are, not the speed: stream k's window i is due at
    # k * hop / 2 + i * hop, and a window is sent only if due before the end (1.2 s)
    assert s.hop_s == 0.5
    assert s.sent == sum(k * 0.25 + i * 0.5 < 1.2 for k in range(2) for i in range(10)) == 5, s

    argv = ["loadgen", "--url", url, "--concurrency", "1", "--duration", "0.5", "--streams", "2"]
    assert main([*argv, "--stream-duration", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r.get("concurrency", r.get("streams")) for r in out["runs"]] == [1, 2]
    assert all(r["errors"] == 0 for r in out["runs"])
    streams = out["runs"][1]
    assert streams["sent"] >= 2 and streams["windows"] == streams["sent"], streams
    assert streams["lost"] == streams["shed"] == streams["duplicated"] == streams["reconnects"] == 0, streams


def _assert_every_window_answered_once(s):
    """A clean stream run: every window a source produced was answered once (none refused, shed, lost or
    yielded twice, no stream failed), and every answer has its latency and lag."""
    assert s.errors == 0 and s.error_messages == [] and s.reconnects == 0, s
    assert s.lost == s.shed == s.duplicated == s.late == 0, s
    assert s.windows == s.sent and s.windows > 0, s
    assert s.latency_ms.count == s.lag_ms.count == s.windows, s
    assert s.duration_s > 0 and s.throughput == pytest.approx(s.windows / s.duration_s), s


@pytest.mark.slow
def test_serving_benchmark_quick_writes_every_figure(
    triton_runtime, triton_repository, repo_root, geo, tiny_dims, serving_labels, tmp_path
):
    """benchmarks/serving.py --quick on a tiny checkpoint and the tiny repository (no model.pt: TorchScript
    is reported as skipped)."""
    import shutil

    import torch

    from avemo.training.models.checkpoint import atomic_torch_save, make_checkpoint
    from avemo.training.models.config import ModelConfig
    from avemo.training.models.model import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(fusion="gated", num_classes=len(serving_labels), **tiny_dims)
    ckpt = tmp_path / "best.pt"
    atomic_torch_save(make_checkpoint(build_model(cfg, geo).eval(), cfg, serving_labels, geo), ckpt)
    repo = shutil.copytree(triton_repository, tmp_path / "repository")  # the backend writes __pycache__
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(repo_root / "benchmarks" / "serving.py"), "--checkpoint", str(ckpt)]
    cmd += ["--model-repository", str(repo), "--quick", "--duration", "0.5", "--concurrency", "1,8"]
    cmd += ["--streams", "2", "--stream-seconds", "1.5", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(out.read_text())

    inproc = report["in_process"]
    assert inproc["eager"]["p50_ms"] > 0 and inproc["eager"]["throughput_b8"] > 0
    assert inproc["torchscript"] is None and "model.pt" in report["skipped"]["torchscript"]
    assert inproc["onnxruntime"]["emotion"]["p50_ms"] > 0
    runs = report["triton"]["models"]["emotion"]
    assert [(r["concurrency"], r["shared_memory"]) for r in runs] == [(1, False), (8, False), (1, True), (8, True)]
    assert all(r["errors"] == 0 and r["requests"] > 0 and r["latency_ms"]["p95"] > 0 for r in runs)
    assert all(r["server"]["compute_infer_us"] > 0 for r in runs)
    streams = report["triton"]["streams"]
    assert streams["streams"] == 2 and streams["errors"] == 0 and streams["windows"] > 0
    # each ratio is the quotient of this run's own figures, judged against its target, and printed as judged
    ort = inproc["onnxruntime"]["emotion"]
    by_run = {(r["concurrency"], r["shared_memory"]): r for r in runs}
    expected = {
        "onnxruntime in-process speed-up over eager, batch 1": (inproc["eager"]["p50_ms"] / ort["p50_ms"], ">=")
    }
    for shm, how in ((False, ""), (True, " shm")):
        c1, c8 = by_run[(1, shm)], by_run[(8, shm)]
        expected[f"Triton gRPC{how} emotion p50 at c=1 / in-process ORT p50"] = (
            c1["latency_ms"]["p50"] / ort["p50_ms"],
            "<=",
        )
        expected[f"Triton{how} emotion throughput at c=8 / in-process ORT best throughput"] = (
            c8["throughput"] / ort["best_throughput"],
            ">=",
        )
    ratios = {r["name"].split(" (")[0]: r for r in report["ratios"]}
    assert sorted(ratios) == sorted(expected)
    printed = proc.stdout.split("ratios (each from this run):")[-1].splitlines()
    for name, (value, op) in expected.items():
        r = ratios[name]
        assert r["op"] == op and r["value"] == pytest.approx(value, rel=1e-12), r
        met = r["value"] >= r["target"] if op == ">=" else r["value"] <= r["target"]
        assert r["met"] is met, r
        line = [ln for ln in printed if ln.startswith(f"  {r['name']}: ")]
        assert len(line) == 1 and line[0].endswith(" PASS" if met else " MISS"), (r, line)
    assert "skipped torchscript" in proc.stdout
