"""`avemo live`: live sources through the real served model, tested with a file played in real time.

The source interface is the one a webcam and a microphone use (one PyAV container per source, one
capture thread each, one WindowAssembler); a file is paced at 1x like a live source, so these runs
take real time. No camera or microphone is needed: the no-device test points at devices that do
not exist and checks the exit status and the message.

Pacing gives lower bounds (no answer before its media was played); nothing here claims an upper one: the
runs keep every window (``--lag-budget none``: no window is dropped for being late), and a watchdog
(``HANG_S``) only turns a run that never ends into a failure.
"""

from __future__ import annotations

import _thread
import json
import threading
import time

import numpy as np
import pytest

from avemo.cli import main
from avemo.client import live, live_sources

CLIP_SECONDS = 3.0
HANG_S = 300.0  # a live run still going after this (its media lasts seconds) is hung: interrupted, it fails


@pytest.fixture(scope="module")
def live_clip(tmp_path_factory, write_clip):
    """A 3 s H.264/AAC clip (96x96 at 12 fps, 16 kHz tone) for the tiny geometry (1 s windows, 0.5 s hop)."""
    return write_clip(tmp_path_factory.mktemp("live") / "live.mp4", seconds=CLIP_SECONDS)


def _run_live(capsys, *argv: str) -> tuple[int, dict, float]:
    """`avemo live ARGV --json` -> (exit status, summary, wall s). A watchdog interrupts (Ctrl-C) a run that is
    still going after HANG_S: it then ends "interrupted" (or raises KeyboardInterrupt), failing the test."""
    watchdog = threading.Timer(HANG_S, _thread.interrupt_main)
    watchdog.daemon = True
    t0 = time.perf_counter()
    watchdog.start()
    try:
        rc = main(["live", *argv, "--json"])
    finally:
        watchdog.cancel()
    wall = time.perf_counter() - t0
    out = capsys.readouterr().out
    return rc, (json.loads(out) if out.strip() else {}), wall


@pytest.mark.slow
def test_live_file_played_in_real_time_gives_windows_in_order_with_lag(
    triton_server, live_clip, geo, serving_labels, capsys
):
    """`avemo live --video CLIP --audio CLIP`: two containers, two capture threads, one assembler, paced at 1x.

    Windows come back in order at the geometry's starts, each answered (none dropped: no lag budget) with
    a lag figure; being paced, the run cannot take less than the clip's duration, and no answer can come
    before its window's media was played. The probabilities equal those of the same clip streamed as a
    file (the same windows)."""
    from avemo.client.grpc_client import EmotionClient
    from avemo.contract.stream import ClipStream

    rc, out, wall = _run_live(
        capsys, "--url", triton_server.url, "--video", str(live_clip), "--audio", str(live_clip), "--lag-budget", "none"
    )
    assert rc == 0, out
    timeline = out["timeline"]
    expected_starts = geo.window_starts(out["duration"])
    assert [w["index"] for w in timeline] == list(range(len(timeline)))
    assert [w["start"] for w in timeline] == pytest.approx(expected_starts, abs=1e-6)
    assert len(timeline) >= 5 and out["windows"] == len(timeline)
    assert out["duration"] == pytest.approx(CLIP_SECONDS, abs=0.15)
    assert out["stopped_by"] == "end" and out["errors"] == [] and out["lag_budget_s"] is None
    assert out["refused"] == out["shed"] == out["late"] == 0 and all(w["error"] is None for w in timeline)
    assert {s["kind"] for s in out["sources"]} == {"audio", "video"} and all(s["paced"] for s in out["sources"])

    # paced: the run took at least real time, and no answer came before its window's media had been played
    assert wall >= CLIP_SECONDS * 0.95 and out["wall_s"] >= CLIP_SECONDS * 0.95, (wall, out["wall_s"])
    assert out["first_answer_s"] == timeline[0]["answered_s"] >= geo.window_seconds * 0.95
    for w in timeline:
        assert w["answered_s"] >= min(w["end"], out["duration"]) - 0.05, w
        # lag (media ready -> answer) covers the latency (sent -> answer) and lies within the run so far
        assert w["latency_ms"] > 0 and w["lag_ms"] is not None and w["lag_ms"] >= w["latency_ms"] - 1e-6, w
        assert w["lag_ms"] <= w["answered_s"] * 1000.0 + 1.0, w
        assert w["label"] in serving_labels and w["smoothed_label"] in serving_labels
        assert sum(w["probs"].values()) == pytest.approx(1, abs=1e-4)
    lag = out["lag_ms"]
    assert 0 <= lag["p50"] <= lag["p95"] <= lag["max"] == max(w["lag_ms"] for w in timeline), lag

    # the live windows are the file's windows: same probabilities as the clip streamed through ClipStream
    with EmotionClient(triton_server.url) as client:
        ref = client.stream(ClipStream(live_clip, client.model().geometry))
    assert len(ref) == len(timeline)
    for r, w in zip(ref, timeline):
        assert w["start"] == pytest.approx(r.start)
        np.testing.assert_allclose([w["probs"][lab] for lab in serving_labels], r.probs, atol=1e-5)


@pytest.mark.slow
def test_live_seconds_stops_early_and_no_audio_runs_video_only(triton_server, live_clip, geo, capsys, tmp_path):
    """`--seconds` ends the run after that much media (not the clip's end); --no-audio masks audio out."""
    plot = tmp_path / "timeline.png"
    rc, out, wall = _run_live(
        capsys,
        "--url",
        triton_server.url,
        "--video",
        str(live_clip),
        "--no-audio",
        "--seconds",
        "1.5",
        "--smooth",
        "median:3",
        "--plot",
        str(plot),
        "--lag-budget",
        "none",
    )
    assert rc == 0, out
    assert out["media_seconds"]["video"] < CLIP_SECONDS - 1, out["media_seconds"]  # the rest was never read
    assert out["stopped_by"] == "--seconds 1.5"
    assert out["duration"] == pytest.approx(1.5, abs=0.15)
    assert wall >= 1.4, wall  # paced: 1.5 s of media take at least that long
    assert out["windows"] == len(out["timeline"]) and all(w["error"] is None for w in out["timeline"])
    assert [s["kind"] for s in out["sources"]] == ["video"]
    assert [w["start"] for w in out["timeline"]] == pytest.approx(geo.window_starts(out["duration"]), abs=1e-6)
    assert all(w["modality_weights"]["audio"] < 0.01 for w in out["timeline"])  # masked out
    assert plot.is_file() and plot.stat().st_size > 0


def test_live_with_no_device_exits_2_naming_each_device_tried(capsys, tmp_path):
    """Devices that do not exist: exit status 2, each device/format tried named with the reason, a hint."""
    missing_file = tmp_path / "no-such-mic.wav"
    rc = main(["live", "--video", "/dev/avemo-no-such-camera", "--video-format", "v4l2", "--audio", str(missing_file)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "/dev/avemo-no-such-camera (v4l2):" in err
    assert f"{missing_file}: No such file or directory" in err
    assert "no video source could be opened" in err and "no audio source could be opened" in err
    assert "--no-video" in err and "--no-audio" in err  # how to go on without one


def test_default_devices_are_tried_and_reported(monkeypatch, capsys):
    """With no --video/--audio the platform's default devices are tried; none opening is exit 2 naming them."""
    specs = {
        "video": [live.SourceSpec("video", "/dev/avemo-no-such-video7", "v4l2")],
        "audio": [live.SourceSpec("audio", "/nonexistent/avemo-mic.wav")],
    }
    monkeypatch.setattr(live, "default_sources", lambda kind, platform=None: (specs[kind], f"hint for {kind}"))
    rc = main(["live"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "/dev/avemo-no-such-video7 (v4l2): " in err and "/nonexistent/avemo-mic.wav: " in err
    assert "hint for video" in err and "hint for audio" in err


@pytest.mark.parametrize(
    "platform, video_format, audio_formats",
    [("linux", "v4l2", ["alsa", "pulse"]), ("darwin", "avfoundation", ["avfoundation"]), ("win32", None, [])],
)
def test_default_device_table(platform, video_format, audio_formats):
    video, video_hint = live.default_sources("video", platform)
    audio, audio_hint = live.default_sources("audio", platform)
    assert [s.format for s in video] == ([video_format] * len(video) if video_format else [])
    assert [s.format for s in audio] == audio_formats
    assert "--video" in video_hint and "--audio" in audio_hint
    if platform == "win32":  # DirectShow has no default name: the hint says how to list and pass one
        assert "dshow" in video_hint and "list_devices" in video_hint


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--no-video", "--no-audio"], "leave nothing to read"),
        (["--no-video", "--video", "x.mp4"], "contradict --no-video"),
        (["--seconds", "0"], "--seconds must be positive"),
        (["--video-option", "novalue"], "KEY=VALUE"),
        (["--smooth", "mean:3"], "bad smoothing 'mean:3'"),
    ],
)
def test_live_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["live", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def _write_wav(path, seconds: float = 0.5, sr: int = 16000):
    import av

    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=sr, layout="mono")
        pcm = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * sr)) / sr) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
        frame.sample_rate = sr
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def test_open_source_paces_files_not_capture_devices_and_names_a_missing_stream(tmp_path, write_clip):
    """A file is played at 1x (paced); capture devices deliver in real time by themselves. A source
    without the wanted stream says what it has."""
    clip = write_clip(tmp_path / "c.mp4", seconds=1.0)
    src = live_sources.open_source(live.SourceSpec("video", str(clip)))
    try:
        assert src.paced and src.stream.type == "video"
    finally:
        src.container.close()
    assert {"v4l2", "alsa", "avfoundation", "dshow"} <= live_sources.CAPTURE_FORMATS
    with pytest.raises(OSError, match=r"no video stream \(it has audio\)"):
        live_sources.open_source(live.SourceSpec("video", str(_write_wav(tmp_path / "a.wav"))))
