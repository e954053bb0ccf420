"""Serving end to end on the REAL bundled tritonserver (nvidia-pytriton), no Docker, no GPU.

tiny torch model -> ONNX (dynamo, opset 18, one file) -> write_model_repository -> TritonServer
-> EmotionClient (config, one-shot, bidirectional stream) / raw tritonclient (malformed requests)
-> predict on a real MP4 -> stop.

No test here claims a speed: waits are for events, under a deadline (``HANG_S``) that only turns a hang
into a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import threading
import time

import numpy as np
import pytest

from avemo.contract.tensors import AUDIO, FRAMES, MODALITY_MASK, MODALITY_WEIGHTS, PROBS

HANG_S = 60.0  # bounds a hang only (a tiny model answers in milliseconds)

# geometry (``geo``: 1 s windows, S = 16000, F = 8), labels (``serving_labels``: 4 classes), the tiny ONNX
# model (``tiny_onnx``), its repository (``triton_repository``) and the shared real server
# (``triton_server``) are conftest.py fixtures.


@pytest.fixture(scope="module")
def client(triton_server, served_model_name):
    from avemo.client.grpc_client import EmotionClient

    c = EmotionClient(triton_server.url, served_model_name, timeout=30)
    yield c
    c.close()


@pytest.fixture(scope="module")
def ort_session(tiny_onnx):
    import onnxruntime as ort

    return ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])


def _windows(geo, n: int = 3):
    from avemo.contract.media import Window

    rng = np.random.default_rng(7)
    masks = [(1, 1), (1, 0), (0, 1), (1, 1)]
    out = []
    for i in range(n):
        amp = [0.05, 0.6, 1.0, 0.3][i % 4]
        audio = np.clip(amp * rng.standard_normal(geo.window_samples), -1, 1).astype(np.float32)  # PCM range
        frames = rng.integers(0, 60 + 60 * i, size=(geo.frames_per_window, 112, 112, 3), dtype=np.uint8)
        out.append(
            Window(start=i * geo.hop_seconds, audio=audio, frames=frames, mask=np.array(masks[i % 4], np.float32))
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


def test_config_pbtxt_follows_contract_and_schema(
    triton_repository, tiny_onnx, repo_root, serving_labels, served_model_name
):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    model_dir = triton_repository / served_model_name
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt", "labels.txt", "warmup"]
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.onnx", "model.py"]
    assert (model_dir / "1" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    assert (model_dir / "1" / "model.py").read_text() == (repo_root / "serving" / "backend_model.py").read_text()
    assert (model_dir / "labels.txt").read_text().splitlines() == serving_labels

    cfg = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.name == served_model_name and cfg.backend == "python" and cfg.max_batch_size == 8
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
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 0  # a lone request does not wait for company
    assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in cfg.instance_group] == [
        (1, "KIND_CPU")
    ]
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["sample_rate"] == "16000" and params["video_fps"] == "8" and params["face_size"] == "112"
    assert float(params["window_seconds"]) == 1.0 and float(params["hop_seconds"]) == 0.5
    assert params["labels"].split(",") == serving_labels and params["num_classes"] == "4"
    assert params["fusion"] == "tiny-gated" and params["checkpoint_sha256"] == "abc123"
    assert len(params["onnx_sha256"]) == 64


def test_rewrite_replaces_model_dir_atomically(tmp_path, tiny_onnx, geo, serving_labels, served_model_name):
    from avemo.export.triton_repo import write_model_repository

    repo_dir = tmp_path / "repo"
    write_model_repository(repo_dir, served_model_name, tiny_onnx, serving_labels, geo)
    (repo_dir / served_model_name / "stale.txt").write_text("old")
    write_model_repository(repo_dir, served_model_name, tiny_onnx, serving_labels, geo, version=2, instance_count=2)
    # the new version joins the earlier one (kept for roll-back); stray files are not carried over
    assert sorted(p.name for p in (repo_dir / served_model_name).iterdir()) == [
        "1",
        "2",
        "config.pbtxt",
        "labels.txt",
        "warmup",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging/backup dirs left
    assert sorted(p.name for p in repo_dir.iterdir()) == [served_model_name]
    with pytest.raises(ValueError, match="label"):
        write_model_repository(repo_dir, served_model_name, tiny_onnx, ["a,b", "c"], geo)
    assert (repo_dir / served_model_name / "2" / "model.onnx").exists()  # failed write left the old model intact


# ------------------------------------------------------------------- backend model without Triton


def test_backend_model_validates_batches_and_survives_errors(
    triton_repository, ort_session, geo, served_model_name, load_backend_model
):
    model, pb = load_backend_model(triton_repository / served_model_name)

    ws = _windows(geo, 3)
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
        pb.FakeRequest({AUDIO: np.full_like(a[:1], 1e19), FRAMES: f[:1], MODALITY_MASK: m[:1]}, "r7"),
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
    errs = {i: out[i].error for i in (1, 2, 3, 5, 6, 7)}
    assert all(e is not None and e.code == pb.TritonError.INVALID_ARG for e in errs.values())
    assert (
        "[request_id=r1] input 'audio' has shape [3, 100], expected [-1, 16000] "
        "(S = window samples for 1 s at 16000 Hz)" in errs[1].msg
    )
    assert "input 'audio' has dtype FP64, expected FP32" in errs[2].msg
    assert "missing input 'frames'" in errs[3].msg and "[-1, 8, 112, 112, 3]" in errs[3].msg
    assert "input 'modality_mask' contains 2 non-finite values" in errs[5].msg
    assert "batch size" in errs[6].msg
    assert "magnitude 1e+19" in errs[7].msg and "[-1, 1]" in errs[7].msg  # finite but absurd: refused

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


@pytest.mark.slow
def test_server_ready_and_client_reads_served_model(triton_server, client, geo, serving_labels, served_model_name):
    assert triton_server.is_running()
    assert triton_server.ready_models() == [(served_model_name, "1")]
    assert triton_server.url.startswith("127.0.0.1:")
    served = client.model()
    assert served.name == served_model_name and served.version == "1"
    assert served.labels == serving_labels
    assert served.geometry == geo
    assert served.input_dims == {AUDIO: (16000,), FRAMES: (8, 112, 112, 3), MODALITY_MASK: (2,)}
    assert served.max_batch_size == 8
    assert served.parameters["fusion"] == "tiny-gated"


@pytest.mark.slow
def test_stream_matches_onnxruntime(client, ort_session, geo):
    windows = _windows(geo, 3)
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


@pytest.mark.slow
def test_stream_sends_windows_as_they_are_produced(client, geo):
    """Each window is sent, and its answer yielded, while the source is still producing: the source hands
    over window i + 1 only once window i's answer has been yielded. A client that held windows or answers
    back until the clip was read would leave the source waiting; the wait is bounded (HANG_S) only so that
    this fails instead of hanging."""
    windows = _windows(geo, 4)
    yielded = [threading.Event() for _ in windows]
    waits: list[bool] = []
    deadline = time.monotonic() + HANG_S

    def source():
        for i, w in enumerate(windows):
            if i:
                waits.append(yielded[i - 1].wait(max(0.0, deadline - time.monotonic())))
            yield w

    got = []
    for r in client.stream_iter(source()):
        got.append(r.index)
        yielded[r.index].set()
    assert got == [0, 1, 2, 3]
    assert waits == [True, True, True]  # every answer came back before the source produced the next window


@pytest.mark.slow
def test_malformed_requests_get_clear_errors_and_server_keeps_serving(triton_server, client, geo, served_model_name):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from avemo.client.grpc_client import WindowError

    raw = grpcclient.InferenceServerClient(triton_server.url)
    w = _windows(geo, 1)[0]
    good = {AUDIO: w.audio[None], FRAMES: w.frames[None], MODALITY_MASK: w.mask[None]}

    def error_of(arrays) -> str:
        with pytest.raises(InferenceServerException) as info:
            raw.infer(served_model_name, _raw_inputs(arrays))
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
    ok = raw.infer(served_model_name, _raw_inputs(good))
    assert ok.as_numpy(PROBS).shape == (1, 4)
    assert np.isclose(ok.as_numpy(PROBS).sum(), 1.0, atol=1e-5)

    # a bad window in a stream is reported as that window's error and the others are answered;
    # raise_on_refused=True raises an error naming that window instead; the next stream works
    windows = _windows(geo, 3)
    windows[1].audio[:] = np.inf
    results = client.stream(windows)
    assert [r.index for r in results] == [0, 1, 2] and [r.error is None for r in results] == [True, False, True]
    assert "non-finite" in results[1].error and results[1].probs is None and results[2].probs.shape == (4,)
    with pytest.raises(WindowError, match=r"window 1 \(start 0\.50 s\).*non-finite") as info:
        client.stream(windows, raise_on_refused=True)
    assert info.value.index == 1
    assert len(client.stream(_windows(geo, 2))) == 2
    # client-side shape check before anything is sent
    with pytest.raises(ValueError, match="expects"):
        client.infer(w.audio[:100], w.frames, w.mask)
    raw.close()
    assert triton_server.is_running()


@pytest.mark.slow
def test_predict_cli_on_real_clip_and_corrupt_clip(triton_server, mp4_clip, serving_labels, geo, tmp_path, capsys):
    from avemo.client import cli as predict_cli

    clip = mp4_clip
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video" * 10)

    parser = argparse.ArgumentParser()
    predict_cli.add_arguments(parser)
    args = parser.parse_args(
        [str(corrupt), str(clip), "--url", triton_server.url, "--json", "--plot", str(tmp_path / "t.png")]
    )
    assert predict_cli.run(args) == 1  # one clip failed
    out, err = capsys.readouterr()
    assert "corrupt.mp4" in err and "skipping" in err
    preds = json.loads(out)
    assert len(preds) == 1
    pred = preds[0]
    assert pred["clip"] == str(clip) and pred["label"] in serving_labels
    assert set(pred["probs"]) == set(serving_labels) and abs(sum(pred["probs"].values()) - 1) < 1e-4
    starts = [w["start"] for w in pred["timeline"]]
    assert starts == geo.window_starts(pred["duration"])
    # default smoothing ema:0.5 (causal); the clip label is the argmax of the mean of the smoothed probabilities
    raw = np.array([[w["probs"][lab] for lab in serving_labels] for w in pred["timeline"]])
    smoothed = np.array([[w["smoothed"][lab] for lab in serving_labels] for w in pred["timeline"]])
    ema = [raw[0]]
    for p in raw[1:]:
        ema.append(0.5 * p + 0.5 * ema[-1])
    np.testing.assert_allclose(smoothed, np.array(ema), atol=1e-6)
    assert pred["smoothing"] == "ema:0.5"
    assert pred["label"] == serving_labels[int(np.argmax(smoothed.mean(axis=0)))]
    for w in pred["timeline"]:
        assert w["end"] > w["start"] and w["label"] in serving_labels and 0 <= w["prob"] <= 1
        assert abs(w["modality_weights"]["audio"] + w["modality_weights"]["video"] - 1) < 1e-4
    assert set(pred["latency_ms"]) == {"p50", "p95", "max", "mean"} and pred["latency_ms"]["p50"] > 0
    assert pred["lag_ms"] is None and pred["first_answer_s"] > 0  # lag only in --realtime mode
    assert pred["crop_method"] in ("haar", "center", "mixed")
    assert (tmp_path / "t.png").stat().st_size > 1000

    args = parser.parse_args([str(clip), "--url", triton_server.url])
    assert predict_cli.run(args) == 0
    out, _ = capsys.readouterr()
    assert "clip label:" in out and "p95" in out and "audio" in out


def test_serve_cli_rejects_empty_repository(tmp_path, capsys):
    from avemo.serving import cli as serve_cli

    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    assert serve_cli.run(parser.parse_args(["--model-repository", str(tmp_path)])) == 2
    assert "avemo export" in capsys.readouterr().err


@pytest.mark.slow
def test_stop_terminates_server(launch_triton, triton_repository):
    server = launch_triton(triton_repository)  # a server of its own: the shared one keeps serving
    proc = server.process
    code = server.stop(timeout=30)
    assert proc.poll() is not None and code == proc.returncode
    assert not server.is_running()
    with pytest.raises(OSError):
        os.kill(proc.pid, 0)


@pytest.mark.slow
def test_start_failure_raises_with_the_server_log(triton_runtime, triton_repository, tmp_path):
    """A model Triton cannot load: start() raises TritonServerError naming the model and quoting the log."""
    import shutil

    from avemo.serving.server import ServerPorts, TritonServer, TritonServerError

    broken = tmp_path / "broken_repository"
    shutil.copytree(triton_repository, broken)
    (model_dir,) = [p for p in broken.iterdir() if p.is_dir()]
    (model_dir / "1" / "model.onnx").write_bytes(b"this is not an ONNX model")
    server = TritonServer(broken, ServerPorts.free(), log_file=tmp_path / "triton.log")
    with pytest.raises(TritonServerError) as info:
        server.start(timeout=120)
    msg = str(info.value)
    assert model_dir.name in msg and "log (" in msg and str(tmp_path / "triton.log") in msg, msg
    assert not server.is_running()


@pytest.mark.slow
def test_embedded_server_serves_the_python_flavour_and_skips_native_ones(
    triton_runtime, tmp_path, tiny_onnx, geo, serving_labels, served_model_name
):
    """A repository written with --backend all holds native flavours the embedded server cannot load:
    it loads the Python-backend model, reports the others as skipped, and has run the loaded model's
    warm-up: one sample per warm-up batch size (export/triton_config.py: WARMUP_BATCH_SIZES, capped by
    max_batch_size), which Triton runs while loading the model, before it reports the model ready (its
    log says so at verbose level 1)."""
    from avemo.export.triton_config import WARMUP_BATCH_SIZES
    from avemo.export.triton_repo import write_model_repository

    repo = tmp_path / "repo"
    write_model_repository(repo, served_model_name, tiny_onnx, serving_labels, geo, max_batch_size=8)
    write_model_repository(repo, served_model_name + "_onnx", tiny_onnx, serving_labels, geo, flavour="onnxruntime")
    log = tmp_path / "triton.log"
    srv = triton_runtime.TritonServer(repo, triton_runtime.ServerPorts.free(), log_file=log, log_verbose=1)
    try:
        srv.start(timeout=120)
        assert srv.ready_models() == [(served_model_name, "1")]
        assert srv.skipped_models == {served_model_name + "_onnx": "onnxruntime"}
        assert f"--load-model={served_model_name}" in srv.command
    finally:
        srv.stop()
    text = log.read_text(errors="replace")
    # Triton (backend_model_instance.cc, verbose 1): "model 'M' instance I is running warmup sample 'S' ..."
    ran = re.findall(r"model '([^']+)' instance \S+ is running warmup sample '([^']+)'", text)
    want = [(served_model_name, f"window_batch{b}") for b in sorted({min(b, 8) for b in WARMUP_BATCH_SIZES})]
    assert sorted(set(ran)) == want, ran or text[-3000:]
    assert "failed to run warmup sample" not in text, text[-3000:]
    loaded = text.index(f"successfully loaded '{served_model_name}'")  # ready only after its warm-up
    assert all(text.index(f"is running warmup sample '{sample}'") < loaded for _, sample in want)


@pytest.mark.slow
def test_warmup_runs_at_load_time(triton_runtime, triton_repository, served_model_name, tmp_path):
    """Triton runs model_warmup while loading: a warm-up sample of the wrong size fails the load (so the
    repository's good samples are really run before the first user request). The server exits on that
    failure (--exit-on-error): start() must say so, not merely run out of time."""
    import shutil

    from avemo.serving.server import ServerPorts, TritonServer, TritonServerError

    broken = tmp_path / "repo"
    shutil.copytree(triton_repository, broken)
    (broken / served_model_name / "warmup" / "audio").write_bytes(b"\0" * 12)
    srv = TritonServer(broken, ServerPorts.free(), log_file=tmp_path / "triton.log")
    try:
        with pytest.raises(TritonServerError) as info:
            srv.start(timeout=120)  # bounds a hang only: the failure is the server's exit, seconds in
        assert not srv.is_running()
    finally:
        srv.stop()  # a server that did start (this test failing) is not left running
    msg = str(info.value)
    assert "exited with code" in msg and "during start-up" in msg and "not ready after" not in msg, msg
    assert "warmup" in (tmp_path / "triton.log").read_text().lower()
