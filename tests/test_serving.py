"""Serving end to end on the REAL bundled tritonserver (nvidia-pytriton), no Docker, no GPU.

tiny torch model -> ONNX (dynamo, opset 18, one file) -> write_model_repository -> TritonServer
-> EmotionClient (config, one-shot, bidirectional stream) / raw tritonclient (malformed requests)
-> predict on a real MP4 -> stop.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from avemo.contract.geometry import WindowGeometry
from avemo.contract.labels import EMOTIONS_4
from avemo.contract.tensors import AUDIO, FRAMES, MODALITY_MASK, MODALITY_WEIGHTS, PROBS

GEOMETRY = WindowGeometry(window_seconds=1.0, hop_seconds=0.5)  # S = 16000, F = 8
LABELS = list(EMOTIONS_4)
MODEL = "emotion"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _server_requirements_missing() -> str | None:
    from avemo.serving import server

    try:
        server.find_tritonserver()
        server.find_stub()
    except Exception as exc:  # noqa: BLE001
        return f"bundled tritonserver not usable: {exc}"
    if server.find_libpython() is None:
        return f"libpython{server.python_version_tag()}.so.1.0 missing (apt-get install libpython{server.python_version_tag()})"
    return None


_MISSING = _server_requirements_missing()
needs_server = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory) -> Path:
    from tests.tiny_onnx import export_tiny_onnx

    return export_tiny_onnx(tmp_path_factory.mktemp("onnx") / "tiny.onnx", GEOMETRY, len(LABELS))


@pytest.fixture(scope="module")
def repo(tmp_path_factory, onnx_path) -> Path:
    from avemo.export.triton_repo import write_model_repository

    repo_dir = tmp_path_factory.mktemp("work") / "model_repository"
    write_model_repository(
        repo_dir,
        MODEL,
        onnx_path,
        LABELS,
        GEOMETRY,
        max_batch_size=8,
        preferred_batch_sizes=(2, 4),
        extra_parameters={"fusion": "tiny-gated", "checkpoint_sha256": "abc123"},
    )
    return repo_dir


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    if _MISSING:
        pytest.skip(_MISSING)
    from avemo.serving.server import ServerPorts, TritonServer

    log = tmp_path_factory.mktemp("log") / "triton.log"
    srv = TritonServer(repo, ServerPorts.free(), log_file=log)
    srv.start(timeout=120)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    from avemo.client.grpc_client import EmotionClient

    c = EmotionClient(server.url, MODEL, timeout=30)
    yield c
    c.close()


@pytest.fixture(scope="module")
def ort_session(onnx_path):
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


def _windows(n: int = 3):
    from avemo.contract.media import Window

    rng = np.random.default_rng(7)
    masks = [(1, 1), (1, 0), (0, 1), (1, 1)]
    out = []
    for i in range(n):
        amp = [0.05, 0.6, 1.0, 0.3][i % 4]
        audio = (amp * rng.standard_normal(GEOMETRY.window_samples)).astype(np.float32)
        frames = rng.integers(0, 60 + 60 * i, size=(GEOMETRY.frames_per_window, 112, 112, 3), dtype=np.uint8)
        out.append(
            Window(start=i * GEOMETRY.hop_seconds, audio=audio, frames=frames, mask=np.array(masks[i % 4], np.float32))
        )
    return out


def _raw_inputs(arrays: dict):
    import tritonclient.grpc as grpcclient

    names = {np.dtype("float32"): "FP32", np.dtype("float64"): "FP64", np.dtype("uint8"): "UINT8"}
    inputs = []
    for name, arr in arrays.items():
        inp = grpcclient.InferInput(name, list(arr.shape), names[arr.dtype])
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs


# -------------------------------------------------------------------------------------- repository


def test_config_pbtxt_follows_contract_and_schema(repo, onnx_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    model_dir = repo / MODEL
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.onnx", "model.py"]
    assert (model_dir / "1" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    assert (model_dir / "1" / "model.py").read_text() == (REPO_ROOT / "serving" / "backend_model.py").read_text()
    assert (model_dir / "labels.txt").read_text().splitlines() == LABELS

    cfg = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.name == MODEL and cfg.backend == "python" and cfg.max_batch_size == 8
    dt = model_config_pb2.DataType
    assert [(i.name, dt.Name(i.data_type), list(i.dims)) for i in cfg.input] == [
        (AUDIO, "TYPE_FP32", [16000]),
        (FRAMES, "TYPE_UINT8", [8, 112, 112, 3]),
        (MODALITY_MASK, "TYPE_FP32", [2]),
    ]
    assert [(o.name, dt.Name(o.data_type), list(o.dims), o.label_filename) for o in cfg.output] == [
        (PROBS, "TYPE_FP32", [4], "labels.txt"),
        (MODALITY_WEIGHTS, "TYPE_FP32", [2], ""),
    ]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in cfg.instance_group] == [
        (1, "KIND_CPU")
    ]
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["sample_rate"] == "16000" and params["video_fps"] == "8" and params["face_size"] == "112"
    assert float(params["window_seconds"]) == 1.0 and float(params["hop_seconds"]) == 0.5
    assert params["labels"].split(",") == LABELS and params["num_classes"] == "4"
    assert params["fusion"] == "tiny-gated" and params["checkpoint_sha256"] == "abc123"
    assert len(params["onnx_sha256"]) == 64


def test_rewrite_replaces_model_dir_atomically(tmp_path, onnx_path):
    from avemo.export.triton_repo import write_model_repository

    repo_dir = tmp_path / "repo"
    write_model_repository(repo_dir, MODEL, onnx_path, LABELS, GEOMETRY)
    (repo_dir / MODEL / "stale.txt").write_text("old")
    write_model_repository(repo_dir, MODEL, onnx_path, LABELS, GEOMETRY, version=2, instance_count=2)
    assert sorted(p.name for p in (repo_dir / MODEL).iterdir()) == ["2", "config.pbtxt", "labels.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging/backup dirs left
    assert sorted(p.name for p in repo_dir.iterdir()) == [MODEL]
    with pytest.raises(ValueError, match="label"):
        write_model_repository(repo_dir, MODEL, onnx_path, ["a,b", "c"], GEOMETRY)
    assert (repo_dir / MODEL / "2" / "model.onnx").exists()  # failed write left the old model intact


def test_serving_and_client_never_import_torch():
    code = (
        "import sys; import serving.server, serving.cli, client.grpc_client, client.predict, client.cli; "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=120)


# ------------------------------------------------------------------- backend model without Triton


def _fake_pb_utils():
    """Just enough of triton_python_backend_utils to drive serving/backend_model.py in-process."""
    import types

    pb = types.ModuleType("triton_python_backend_utils")

    class TritonError(Exception):
        UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED = range(6)

        def __init__(self, msg, code=0):
            super().__init__(msg)
            self.msg, self.code = msg, code

        def message(self):
            return self.msg

    class Tensor:
        def __init__(self, name, arr):
            self._name, self._arr = name, arr

        def name(self):
            return self._name

        def as_numpy(self):
            return self._arr

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self.error = output_tensors, error

    class Request:
        def __init__(self, arrays, rid=""):
            self.tensors = {k: Tensor(k, v) for k, v in arrays.items()}
            self.rid = rid

        def request_id(self):
            return self.rid

    pb.TritonError = TritonError
    pb.TritonModelException = type("TritonModelException", (Exception,), {})
    pb.Tensor = Tensor
    pb.InferenceResponse = InferenceResponse
    pb.get_input_tensor_by_name = lambda req, name: req.tensors.get(name)
    pb.FakeRequest = Request
    return pb


def test_backend_model_validates_batches_and_survives_errors(repo, onnx_path, ort_session, monkeypatch):
    import importlib.util

    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    pb = _fake_pb_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    model_dir = repo / MODEL
    spec = importlib.util.spec_from_file_location("avemo_backend_model_under_test", model_dir / "1" / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    model = mod.TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps(json_format.MessageToDict(cfg, preserving_proto_field_name=True)),
            "model_repository": str(model_dir),
            "model_version": "1",
            "model_name": MODEL,
            "model_instance_kind": "CPU",
            "model_instance_device_id": "0",
        }
    )

    ws = _windows(3)
    a = np.stack([w.audio for w in ws])
    f = np.stack([w.frames for w in ws])
    m = np.stack([w.mask for w in ws])
    reqs = [
        pb.FakeRequest({AUDIO: a[:1], FRAMES: f[:1], MODALITY_MASK: m[:1]}, "r0"),
        pb.FakeRequest({AUDIO: a[:, :100], FRAMES: f, MODALITY_MASK: m}, "r1"),
        pb.FakeRequest({AUDIO: a.astype(np.float64), FRAMES: f, MODALITY_MASK: m}, "r2"),
        pb.FakeRequest({AUDIO: a, MODALITY_MASK: m}, "r3"),
        pb.FakeRequest({AUDIO: a[1:], FRAMES: f[1:], MODALITY_MASK: m[1:]}, "r4"),
        pb.FakeRequest({AUDIO: a[:1], FRAMES: f[:1], MODALITY_MASK: np.full((1, 2), np.nan, np.float32)}, "r5"),
        pb.FakeRequest({AUDIO: a[:2], FRAMES: f[:1], MODALITY_MASK: m[:2]}, "r6"),
    ]
    calls = []
    real_run = model.session.run

    class CountingSession:
        def run(self, names, feed):
            calls.append(feed[AUDIO].shape[0])
            return real_run(names, feed)

    model.session = CountingSession()
    out = model.execute(reqs)
    assert len(out) == len(reqs)
    assert calls == [3]  # the two valid requests ran as ONE onnxruntime batch of 1 + 2
    ref_p, ref_w = ort_session.run([PROBS, MODALITY_WEIGHTS], {AUDIO: a, FRAMES: f, MODALITY_MASK: m})
    for i, rows in ((0, [0]), (4, [1, 2])):
        assert out[i].error is None
        got = {t.name(): t.as_numpy() for t in out[i].output_tensors}
        np.testing.assert_allclose(got[PROBS], ref_p[rows], atol=1e-6)
        np.testing.assert_allclose(got[MODALITY_WEIGHTS], ref_w[rows], atol=1e-6)
    errs = {i: out[i].error for i in (1, 2, 3, 5, 6)}
    assert all(e is not None and e.code == pb.TritonError.INVALID_ARG for e in errs.values())
    assert (
        "[request_id=r1] input 'audio' has shape [3, 100], expected [-1, 16000] (S = window samples for 1 s at 16000 Hz)"
        in errs[1].msg
    )
    assert "input 'audio' has dtype FP64, expected FP32" in errs[2].msg
    assert "missing input 'frames'" in errs[3].msg and "[-1, 8, 112, 112, 3]" in errs[3].msg
    assert "input 'modality_mask' contains 2 non-finite values" in errs[5].msg
    assert "batch size" in errs[6].msg

    class BrokenSession:
        def run(self, names, feed):
            raise RuntimeError("Pad reflect: pre-pad exceeds maximum")

    model.session = BrokenSession()
    out = model.execute(reqs[:1] + reqs[4:5])
    assert all(r.error is not None and r.error.code == pb.TritonError.INTERNAL for r in out)
    assert "Pad reflect" in out[0].error.msg and "[request_id=r0]" in out[0].error.msg
    model.session = CountingSession()
    assert model.execute(reqs[:1])[0].error is None  # keeps serving after an onnxruntime failure
    model.finalize()


# ------------------------------------------------------------------------------------------ server


@needs_server
def test_server_ready_and_client_reads_served_model(server, client):
    assert server.is_running()
    assert server.ready_models() == [(MODEL, "1")]
    assert server.url.startswith("127.0.0.1:")
    served = client.model()
    assert served.name == MODEL and served.version == "1"
    assert served.labels == LABELS
    assert served.geometry == GEOMETRY
    assert served.input_dims == {AUDIO: (16000,), FRAMES: (8, 112, 112, 3), MODALITY_MASK: (2,)}
    assert served.max_batch_size == 8
    assert served.parameters["fusion"] == "tiny-gated"


@needs_server
def test_stream_matches_onnxruntime(client, ort_session):
    windows = _windows(3)
    results = client.stream(windows)
    assert [r.index for r in results] == [0, 1, 2]
    assert [r.start for r in results] == [w.start for w in windows]
    feed = {
        AUDIO: np.stack([w.audio for w in windows]),
        FRAMES: np.stack([w.frames for w in windows]),
        MODALITY_MASK: np.stack([w.mask for w in windows]),
    }
    ref_probs, ref_weights = ort_session.run([PROBS, MODALITY_WEIGHTS], feed)
    got_probs = np.stack([r.probs for r in results])
    got_weights = np.stack([r.modality_weights for r in results])
    np.testing.assert_allclose(got_probs, ref_probs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got_weights, ref_weights, atol=1e-5, rtol=0)
    assert not np.allclose(got_probs[0], got_probs[1])  # the windows really differ
    assert all(r.latency_ms > 0 for r in results)

    # one-shot: single window and batch larger than max_batch_size (split client-side)
    p1, w1 = client.infer(windows[0].audio, windows[0].frames, windows[0].mask)
    assert p1.shape == (1, 4) and w1.shape == (1, 2)
    np.testing.assert_allclose(p1[0], ref_probs[0], atol=1e-5, rtol=0)
    many = [windows[i % 3] for i in range(11)]
    pb, wb = client.infer(
        np.stack([w.audio for w in many]), np.stack([w.frames for w in many]), np.stack([w.mask for w in many])
    )
    assert pb.shape == (11, 4) and wb.shape == (11, 2)
    np.testing.assert_allclose(pb, ref_probs[[i % 3 for i in range(11)]], atol=1e-5, rtol=0)


@needs_server
def test_stream_sends_windows_as_they_are_produced(client):
    windows = _windows(4)
    produced = []

    def slow_source():
        for w in windows:
            produced.append(time.perf_counter())
            yield w
            time.sleep(0.3)

    got = []
    for r in client.stream_iter(slow_source()):
        got.append((r.index, time.perf_counter()))
    assert [i for i, _ in got] == [0, 1, 2, 3]
    # window 0's result arrived before the source produced window 2 (no waiting for the whole clip)
    assert got[0][1] < produced[2]


@needs_server
def test_malformed_requests_get_clear_errors_and_server_keeps_serving(server, client):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from avemo.client.grpc_client import WindowError

    raw = grpcclient.InferenceServerClient(server.url)
    w = _windows(1)[0]
    good = {AUDIO: w.audio[None], FRAMES: w.frames[None], MODALITY_MASK: w.mask[None]}

    def error_of(arrays) -> str:
        with pytest.raises(InferenceServerException) as info:
            raw.infer(MODEL, _raw_inputs(arrays))
        return str(info.value)

    msg = error_of(dict(good, audio=w.audio[None, :100]))
    assert "'audio'" in msg and "16000" in msg and "100" in msg, msg
    msg = error_of(dict(good, audio=w.audio[None].astype(np.float64)))
    assert "'audio'" in msg and "FP64" in msg and "FP32" in msg, msg
    msg = error_of({AUDIO: good[AUDIO], MODALITY_MASK: good[MODALITY_MASK]})
    assert "frames" in msg and "missing" in msg, msg
    # values the core cannot check: the backend model rejects them with INVALID_ARG
    msg = error_of(dict(good, audio=np.full_like(good[AUDIO], np.nan)))
    assert "'audio'" in msg and "non-finite" in msg and "INVALID_ARG" in msg, msg

    # still serving: raw and client requests succeed
    ok = raw.infer(MODEL, _raw_inputs(good))
    assert ok.as_numpy(PROBS).shape == (1, 4)
    assert np.isclose(ok.as_numpy(PROBS).sum(), 1.0, atol=1e-5)

    # a bad window in a stream raises an error naming that window; the next stream works
    windows = _windows(3)
    windows[1].audio[:] = np.inf
    with pytest.raises(WindowError, match=r"window 1 \(start 0\.50 s\).*non-finite") as info:
        client.stream(windows)
    assert info.value.index == 1
    assert len(client.stream(_windows(2))) == 2
    # client-side shape check before anything is sent
    with pytest.raises(ValueError, match="expects"):
        client.infer(w.audio[:100], w.frames, w.mask)
    raw.close()
    assert server.is_running()


def _write_clip(path: Path, seconds: float = 2.2, fps: int = 12, size: int = 96, sr: int = 16000) -> Path:
    import av

    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width = vs.height = size
        vs.pix_fmt = "yuv420p"
        vs.options = {"preset": "ultrafast"}
        a_s = c.add_stream("aac", rate=sr)
        a_s.layout = "mono"
        for i in range(int(seconds * fps)):
            img = np.full((size, size, 3), (40 * i) % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for p in vs.encode(frame):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        n = int(seconds * sr)
        x = (0.4 * np.sin(2 * np.pi * 330 * np.arange(n) / sr) * np.linspace(0.1, 1, n)).astype(np.float32)
        for s0 in range(0, n, 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(x[None, s0 : s0 + 1024]), format="fltp", layout="mono"
            )
            frame.sample_rate = sr
            frame.pts = s0
            for p in a_s.encode(frame):
                c.mux(p)
        for p in a_s.encode():
            c.mux(p)
    return path


@needs_server
def test_predict_cli_on_real_clip_and_corrupt_clip(server, tmp_path, capsys):
    from avemo.client import cli as predict_cli

    clip = _write_clip(tmp_path / "clip.mp4")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video" * 10)

    parser = argparse.ArgumentParser()
    predict_cli.add_arguments(parser)
    args = parser.parse_args(
        [str(corrupt), str(clip), "--url", server.url, "--json", "--plot", str(tmp_path / "t.png")]
    )
    assert predict_cli.run(args) == 1  # one clip failed
    out, err = capsys.readouterr()
    assert "corrupt.mp4" in err and "skipping" in err
    preds = json.loads(out)
    assert len(preds) == 1
    pred = preds[0]
    assert pred["clip"] == str(clip) and pred["label"] in LABELS
    assert set(pred["probs"]) == set(LABELS) and abs(sum(pred["probs"].values()) - 1) < 1e-4
    starts = [w["start"] for w in pred["timeline"]]
    assert starts == GEOMETRY.window_starts(pred["duration"])
    mean = np.mean([[w["probs"][lab] for lab in LABELS] for w in pred["timeline"]], axis=0)
    assert pred["label"] == LABELS[int(np.argmax(mean))]
    for w in pred["timeline"]:
        assert w["end"] > w["start"] and w["label"] in LABELS and 0 <= w["prob"] <= 1
        assert abs(w["modality_weights"]["audio"] + w["modality_weights"]["video"] - 1) < 1e-4
    assert set(pred["latency_ms"]) == {"p50", "p95", "mean"} and pred["latency_ms"]["p50"] > 0
    assert pred["crop_method"] in ("haar", "center", "mixed")
    assert (tmp_path / "t.png").stat().st_size > 1000

    args = parser.parse_args([str(clip), "--url", server.url])
    assert predict_cli.run(args) == 0
    out, _ = capsys.readouterr()
    assert "clip label:" in out and "p95" in out and "audio" in out


@needs_server
def test_serve_cli_rejects_empty_repository(tmp_path, capsys):
    from avemo.serving import cli as serve_cli

    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    assert serve_cli.run(parser.parse_args(["--model-repository", str(tmp_path)])) == 2
    assert "avemo export" in capsys.readouterr().err


@needs_server
def test_stop_terminates_server(server):
    proc = server.process
    code = server.stop(timeout=30)
    assert proc.poll() is not None and code == proc.returncode
    assert not server.is_running()
    with pytest.raises(OSError):
        os.kill(proc.pid, 0)
