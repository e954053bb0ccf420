"""`avemo app` without a browser: options, the upload guard, the page's texts and figures, the live session
(fed synthetic webcam frames and microphone chunks, answered by a fake client), and no torch."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

from avemo.client import app, app_live, app_views
from avemo.client.grpc_client import EmotionClient, EmotionClientError, ServedModel
from avemo.contract.media import MediaError
from avemo.contract.options import UsageError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    app.add_arguments(parser)
    return parser.parse_args(list(argv))


# ------------------------------------------------------------------------------------------ options


def test_defaults_bind_loopback_and_limit_uploads():
    args = parse()
    assert args.host == "127.0.0.1" and app.is_loopback(args.host)
    assert args.port == 7860 and args.max_upload_mb == 200
    assert args.ssl_certfile is None and args.ssl_keyfile is None and args.samples is None
    app.check_args(args)


def test_check_args_refuses_what_cannot_work(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(UsageError, match="go together"):
        app.check_args(parse("--ssl-certfile", str(cert)))
    with pytest.raises(UsageError, match="no such file"):
        app.check_args(parse("--ssl-certfile", str(cert), "--ssl-keyfile", str(tmp_path / "missing.pem")))
    with pytest.raises(UsageError, match="not a folder"):
        app.check_args(parse("--samples", str(tmp_path / "nothing")))
    with pytest.raises(UsageError, match="positive"):
        app.check_args(parse("--max-upload-mb", "0"))
    app.check_args(parse("--ssl-certfile", str(cert), "--ssl-keyfile", str(cert), "--host", "0.0.0.0"))
    assert not app.is_loopback("0.0.0.0") and app.is_loopback("localhost") and app.is_loopback("127.0.0.2")


def test_upload_guard_opens_only_uploads_and_samples(tmp_path):
    uploads, samples, other = tmp_path / "gradio", tmp_path / "corpus", tmp_path / "secret"
    for d in (uploads / "abc", samples / "Actor_01", other):
        d.mkdir(parents=True)
    guard = app.UploadGuard(uploads, samples)
    assert guard.check(uploads / "abc" / "clip.mp4") == (uploads / "abc" / "clip.mp4").resolve()
    assert guard.check(samples / "Actor_01" / "x.mp4")
    for bad in (other / "passwd", uploads / ".." / "secret" / "passwd", "/etc/passwd"):
        with pytest.raises(PermissionError, match="not an uploaded file"):
            guard.check(bad)
    (uploads / "abc" / "link.mp4").symlink_to(other / "passwd")
    with pytest.raises(PermissionError):
        guard.check(uploads / "abc" / "link.mp4")


# ------------------------------------------------------------------------------------------- views


def _prediction(labels=("neutral", "happy", "sad", "angry")) -> dict:
    timeline = []
    for i in range(3):
        probs = dict(zip(labels, (0.1, 0.6, 0.2, 0.1)))
        timeline.append(
            {
                "start": 0.5 * i,
                "end": 0.5 * i + 1.0,
                "label": "happy",
                "prob": 0.6,
                "probs": probs,
                "modality_weights": {"audio": 0.25, "video": 0.75},
                "latency_ms": 12.0 + i,
            }
        )
    return {
        "clip": "/tmp/gradio/xyz/clip.mp4",
        "label": "happy",
        "probs": dict(zip(labels, (0.1, 0.6, 0.2, 0.1))),
        "timeline": timeline,
        "latency_ms": {"p50": 13.0, "p95": 13.9, "mean": 13.0},
        "crop_method": "haar",
        "duration": 2.0,
        "windows": 3,
        "model": {"name": "emotion", "version": "1"},
        "modalities": {"audio": True, "video": True},
    }


def test_summary_table_and_figure():
    pred = _prediction()
    md = app_views.summary_markdown(pred, "clip.mp4")
    assert "clip.mp4: **happy** (0.60)" in md and "audio **0.25**, video **0.75**" in md
    assert "p50 **13.0 ms**" in md and "model emotion v1" in md and "/tmp/gradio" not in md
    rows = app_views.timeline_rows(pred["timeline"])
    assert len(rows) == 3 and len(rows[0]) == len(app_views.TABLE_HEADERS) and rows[1][:3] == [0.5, 1.5, "happy"]
    refused = {"start": 1.5, "end": 2.5, "error": "bad shape", "label": None, "probs": None, "modality_weights": None}
    assert app_views.timeline_rows([refused])[0][2] == "error: bad shape"
    assert app_views.mean_weights(pred["timeline"] + [refused]) == {"audio": 0.25, "video": 0.75}
    fig = app_views.timeline_figure(pred["timeline"] + [refused], list(pred["probs"]), "t", "happy")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert len(fig.axes[0].lines) == 4 and len(fig.axes[1].lines) == 2


def test_error_texts_name_the_file_not_the_temp_path():
    tmp = "/tmp/gradio/abc/bad.mp4"
    exc = MediaError(tmp, f"cannot open as audio/video (InvalidDataError: ... input: '{tmp}')")
    text = app_views.upload_error_text("bad.mp4", exc, "h:1", tmp)
    assert text.startswith("**Error: cannot read `bad.mp4`**") and "/tmp/gradio" not in text and "'bad.mp4'" in text
    text = app_views.upload_error_text("a.mp4", EmotionClientError("connection refused"), "h:1")
    assert "server error" in text and "avemo serve" in text and "h:1" in text
    assert "cannot use" in app_views.upload_error_text("a.mp4", PermissionError("a.mp4: not an uploaded file"), "")
    assert "RuntimeError" in app_views.upload_error_text("a.mp4", RuntimeError("boom"), "")


def test_server_status_says_down_and_how_to_start():
    client = EmotionClient("127.0.0.1:1", "emotion", timeout=2)
    try:
        served, text = app_views.server_status(client)
    finally:
        client.close()
    assert served is None
    assert "server down" in text and "avemo serve" in text and "127.0.0.1:1" in text


def test_sample_clips_one_per_emotion_first(tmp_path):
    for actor in (1, 2):
        for emo in (1, 3, 5):
            p = tmp_path / f"Actor_{actor:02d}" / f"01-01-{emo:02d}-01-01-01-{actor:02d}.mp4"
            p.parent.mkdir(exist_ok=True)
            p.write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not media")
    clips = app_views.sample_clips(tmp_path, limit=4)
    assert [c.name.split("-")[2] for c in clips[:3]] == ["01", "03", "05"]
    assert len(clips) == 4 and all(c.suffix == ".mp4" for c in clips)


# -------------------------------------------------------------------------------------- live session


class FakeClient:
    """Answers like the served model: probs from the window's mean brightness, weights (0.3, 0.7)."""

    def __init__(self, geometry, labels):
        self.served = ServedModel("emotion", "1", list(labels), geometry, {}, 8)
        self.calls = []

    def model(self, refresh=False):
        return self.served

    def infer(self, audio, frames, mask, retry_busy=True):
        self.calls.append((audio.shape, frames.shape, tuple(mask)))
        c = len(self.served.labels)
        k = int(frames.mean() // 64) % c if frames.size else 0
        probs = np.full((1, c), 0.1 / (c - 1), np.float32)
        probs[0, k] = 0.9
        return probs, np.array([[0.3, 0.7]], np.float32)


def test_to_mono_float():
    stereo = np.array([[16384, -16384], [32767, 32767]], np.int16)
    out = app_live.to_mono_float(stereo)
    assert out.dtype == np.float32 and out.shape == (2,) and out[0] == 0 and abs(out[1] - 1) < 1e-3
    assert app_live.to_mono_float(np.ones(5, np.float64)).dtype == np.float32


def test_live_session_windows_from_webcam_and_microphone(geo, serving_labels):
    """2.2 s of 48 kHz int16 microphone chunks and 10 fps webcam frames -> windows 0, 0.5, 1.0 answered in order
    (the resampler holds back a few samples, so 2.0 s would not quite complete the window at 1.0)."""
    client = FakeClient(geo, serving_labels)
    sess = app_live.LiveSession(client, smooth="none", modalities="audio + video")
    t0, got = 100.0, []
    rng = np.random.default_rng(0)
    for i in range(23):  # frames at 0.0 .. 2.2 s
        got += sess.push_image(np.full((96, 128, 3), 200, np.uint8), now=t0 + i * 0.1)
        if i % 2 == 1:  # a 0.2 s chunk ending now
            pcm = (rng.standard_normal(9600) * 3000).astype(np.int16)
            got += sess.push_audio(48000, pcm, now=t0 + i * 0.1)
    assert [r["start"] for r in got] == [0.0, 0.5, 1.0]
    assert [r["label"] for r in got] == [serving_labels[3]] * 3  # bright frames (mean 200 // 64 = 3)
    assert all(r["modality_weights"] == pytest.approx({"audio": 0.3, "video": 0.7}) for r in got)
    assert all(r["lag_ms"] is not None and r["lag_ms"] >= 0 for r in got)
    audio_shape, frames_shape, mask = client.calls[0]
    assert audio_shape == (geo.window_samples,) and frames_shape[0] == geo.frames_per_window and mask == (1.0, 1.0)
    assert sess.frames_in == 23 and abs(sess.audio_seconds - 2.2) < 1e-6
    assert sess.lag_stats()["n"] == 3 and "window 3" in sess.status_markdown()


def test_live_session_drops_windows_the_server_is_too_busy_for(geo, serving_labels):
    """A busy answer (full queue) drops the live window at once, counted, instead of retrying it late."""
    from avemo.client.grpc_client import ServerBusy

    client = FakeClient(geo, serving_labels)
    answer = client.infer
    calls = []

    def infer(audio, frames, mask, retry_busy=True):
        assert retry_busy is False  # a live window is stale by the time a retry would come back
        calls.append(1)
        if len(calls) in (1, 3):  # the first and third windows meet a full queue
            raise ServerBusy("inference failed on 'emotion': Exceeds maximum queue size")
        return answer(audio, frames, mask)

    client.infer = infer
    sess = app_live.LiveSession(client, smooth="none", modalities="video only")
    got = []
    for i in range(30):  # 10 fps for 3 s: windows at 0, 0.5, 1.0
        got += sess.push_image(np.full((96, 128, 3), 200, np.uint8), now=100.0 + i * 0.1)
    assert len(calls) >= 4 and len(got) == len(calls) - 2 and sess.shed == 2 and sess.late == 0
    assert [r["start"] for r in got][:2] == [geo.hop_seconds, 3 * geo.hop_seconds]  # windows 1 and 3
    assert "2 dropped, 0 late" in sess.status_markdown()


def test_live_session_pads_a_late_microphone_and_video_only(geo, serving_labels):
    client = FakeClient(geo, serving_labels)
    sess = app_live.LiveSession(client, modalities="audio + video")
    for i in range(11):  # 1 s of camera alone: no window without audio
        assert sess.push_image(np.zeros((64, 64, 3), np.uint8), now=10.0 + i * 0.1) == []
    assert "microphone" in sess.status_markdown()
    # the microphone starts at 1.0 s with 0.6 s of audio: 0.4 s of silence is put in front
    out = sess.push_audio(16000, np.zeros(9600, np.float32), now=11.6)
    assert abs(sess.audio_seconds - 1.6) < 0.02
    assert [r["start"] for r in out] == [0.0]  # audio up to 1.6 s, frames up to 1.0 s: only window 0 is complete

    video_only = app_live.LiveSession(FakeClient(geo, serving_labels), modalities="video only")
    results = []
    for i in range(16):
        results += video_only.push_image(np.zeros((64, 64, 3), np.uint8), now=i * 0.1)
    assert [r["start"] for r in results] == [0.0, 0.5] and video_only.push_audio(16000, np.zeros(100, np.float32)) == []


def test_live_sessions_are_bounded(geo, serving_labels):
    sessions = app_live.LiveSessions(lambda: FakeClient(geo, serving_labels), limit=2)
    a = sessions.get("a", "audio + video")
    assert sessions.get("a", "audio + video") is a
    assert sessions.get("a", "video only") is not a  # another modality choice starts afresh
    sessions.get("b", "audio + video")
    sessions.get("c", "audio + video")
    assert len(sessions) == 2 and sessions.get("a", "audio + video", create=False) is None
    sessions.drop("b")
    assert len(sessions) == 1


# ---------------------------------------------------------------------------------------- no torch

_NO_TORCH = r"""
import sys
BLOCKED = {"torch", "torchvision", "onnx", "onnxscript", "tensorboard", "wandb"}
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked")
        return None
sys.meta_path.insert(0, _Blocker())
import json
from avemo.client.app import build_app
demo = build_app("127.0.0.1:1", "emotion")
from avemo import cli
parsed = vars(cli.build_parser("app").parse_args(["app", "--port", "7999"]))
parsed = {k: v for k, v in parsed.items() if isinstance(v, (str, int, float, type(None)))}
print("@@" + json.dumps({"torch": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
                          "gradio": "gradio" in sys.modules, "parsed": parsed}))
"""


def test_app_builds_without_torch(tmp_path):
    """The page and `avemo app`'s parser (a registered command) load without torch & co."""
    from avemo import cli

    assert "app" in cli.COMMANDS and cli.COMMANDS["app"][0] == "avemo.client.app"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TORCH], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("@@"))[2:])
    assert out["gradio"] and out["torch"] == []
    assert out["parsed"]["command"] == "app"
    assert out["parsed"]["port"] == 7999 and out["parsed"]["host"] == "127.0.0.1"
