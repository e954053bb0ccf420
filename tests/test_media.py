"""contract.media on small real MP4/WAV files written here with PyAV (H.264 + AAC, pcm_s16le)."""

from __future__ import annotations

import pickle

import av
import numpy as np
import pytest

from avemo.contract import faces, media
from avemo.contract.geometry import DEFAULT_GEOMETRY as G
from avemo.contract.media import (
    MediaError,
    crop_faces,
    decode_audio,
    decode_clip,
    decode_video_frames,
    make_windows,
    window_arrays,
)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]  # second 0 red, 1 green, 2 blue (RGB)


def write_media(path, seconds=2.5, fps=24, size=128, video=True, audio=True, sr=48000, freq=440.0, codec="aac"):
    """Frames are a solid colour changing every second (COLOURS); audio is a sine at ``freq``."""
    fmt = "wav" if str(path).endswith(".wav") else None
    with av.open(str(path), "w", format=fmt) as c:
        if video:
            vs = c.add_stream("libx264", rate=fps)
            vs.width = vs.height = size
            vs.pix_fmt = "yuv420p"
            vs.options = {"preset": "ultrafast"}
        if audio:
            a_s = c.add_stream(codec, rate=sr)
            a_s.layout = "mono"
        if video:
            for i in range(int(round(seconds * fps))):
                img = np.zeros((size, size, 3), np.uint8)
                img[:] = COLOURS[int(i / fps) % 3]
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = i
                for p in vs.encode(frame):
                    c.mux(p)
            for p in vs.encode():
                c.mux(p)
        if audio:
            n = int(seconds * sr)
            x = 0.5 * np.sin(2 * np.pi * freq * np.arange(n) / sr)
            fmt_a = "fltp" if codec == "aac" else "s16"
            for s0 in range(0, n, 1024):
                chunk = x[s0 : s0 + 1024][None]
                chunk = chunk.astype(np.float32) if fmt_a == "fltp" else (chunk * 32767).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=fmt_a, layout="mono")
                frame.sample_rate = sr
                frame.pts = s0
                for p in a_s.encode(frame):
                    c.mux(p)
            for p in a_s.encode():
                c.mux(p)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    return {
        "av": write_media(d / "av.mp4"),
        "short": write_media(d / "short.mp4", seconds=1.25),
        "silent": write_media(d / "silent.mp4", audio=False),
        "wav": write_media(d / "tone.wav", video=False, codec="pcm_s16le", sr=22050, seconds=3.0),
        "dir": d,
    }


def _dominant_hz(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr)[spec.argmax()]


def test_decode_audio_mp4(files):
    a = decode_audio(files["av"], 16000)
    assert a.dtype == np.float32 and a.ndim == 1
    assert abs(len(a) - 40000) < 0.03 * 40000  # AAC padding adds a few ms
    assert abs(_dominant_hz(a, 16000) - 440) < 5
    assert 0.3 < np.abs(a).max() <= 1.0


def test_decode_audio_wav_and_clip_without_video(files):
    a = decode_audio(files["wav"])
    assert abs(len(a) - 48000) <= 2 and abs(_dominant_hz(a, 16000) - 440) < 5
    clip = decode_clip(files["wav"])
    assert clip.has_audio and not clip.has_video
    assert clip.frames.shape == (0, 112, 112, 3) and clip.frames.dtype == np.uint8
    assert abs(clip.duration - 3.0) < 0.01
    wins = make_windows(clip)
    assert len(wins) == len(G.window_starts(clip.duration)) == 2
    assert all(w.mask.tolist() == [1.0, 0.0] and not w.frames.any() for w in wins)
    assert decode_video_frames(files["wav"], 8)[0].shape[0] == 0


@pytest.mark.parametrize("src_fps", [4, 24, 30])
def test_decode_video_frames_fixed_rate_and_rgb(tmp_path, src_fps):
    path = write_media(tmp_path / f"v{src_fps}.mp4", fps=src_fps, audio=False)
    frames, duration = decode_video_frames(path, 8)
    assert abs(duration - 2.5) < 1e-3
    assert frames.dtype == np.uint8 and frames.shape == (20, 128, 128, 3)
    centre = frames[:, 64, 64].astype(int)
    expected = np.array([COLOURS[int(k / 8)] for k in range(20)])  # frame k at time k/8 s
    assert np.abs(centre - expected).max() < 40, centre
    assert centre[0, 0] > 200 and centre[0, 1] < 40 and centre[0, 2] < 40  # red first: RGB order


def test_decode_clip_and_windows(files):
    clip = decode_clip(files["av"])
    assert clip.has_audio and clip.has_video and clip.path == str(files["av"])
    assert clip.frames.shape == (20, 112, 112, 3) and clip.audio.dtype == np.float32
    assert clip.crop_method == "center" and clip.crop_counts == {"haar": 0, "center": 20}  # no face in a colour
    assert 2.5 <= clip.duration < 2.6
    wins = make_windows(clip)
    starts = G.window_starts(clip.duration)
    assert [w.start for w in wins] == starts and len(wins) == 2
    for w in wins:
        assert w.audio.shape == (G.window_samples,) and w.audio.dtype == np.float32
        assert w.frames.shape == (G.frames_per_window, 112, 112, 3) and w.frames.dtype == np.uint8
        assert w.mask.tolist() == [1.0, 1.0] and w.mask.dtype == np.float32
    # window 0 is seconds 0-2: red then green frames
    assert wins[0].frames[0, 56, 56, 0] > 200 and wins[0].frames[8, 56, 56, 1] > 200
    np.testing.assert_array_equal(wins[0].audio, clip.audio[: G.window_samples])


def test_short_clip_is_padded(files):
    clip = decode_clip(files["short"])
    assert clip.frames.shape[0] == 10
    (w,) = make_windows(clip)
    n = len(clip.audio)
    assert 19000 < n < 21000
    assert np.abs(w.audio[:n]).max() > 0.3 and not w.audio[n:].any()
    np.testing.assert_array_equal(w.frames[10:], np.repeat(clip.frames[-1:], 6, axis=0))


def test_clip_without_audio_stream(files):
    clip = decode_clip(files["silent"])
    assert not clip.has_audio and clip.audio.shape == (0,) and clip.has_video
    wins = make_windows(clip)
    assert all(w.mask.tolist() == [0.0, 1.0] and not w.audio.any() for w in wins)
    assert decode_audio(files["silent"]).shape == (0,)


def test_window_arrays_primitive():
    g = G
    audio = np.arange(3 * g.sample_rate, dtype=np.float32)
    frames = np.arange(24, dtype=np.uint8)[:, None, None, None] * np.ones((1, 112, 112, 3), np.uint8)
    a, f = window_arrays(audio, frames, g, 1.0)
    assert a[0] == g.sample_rate and a[-1] == g.sample_rate + g.window_samples - 1
    assert f[:, 0, 0, 0].tolist() == list(range(8, 24))
    a, f = window_arrays(audio, frames, g, 2.0)  # past the end
    assert not a[g.sample_rate :].any() and f[:, 0, 0, 0].tolist() == list(range(16, 24)) + [23] * 8
    a, f = window_arrays(np.zeros(0, np.float32), None, g, 0.0)
    assert a.shape == (g.window_samples,) and f.shape == (g.frames_per_window, 112, 112, 3) and not f.any()


def test_crop_faces_center_and_fake_haar(monkeypatch):
    frames = np.zeros((6, 120, 200, 3), np.uint8)
    frames[:, :, 40:160] = (0, 0, 255)  # the centre square (x 40..160) is blue
    crops, counts = crop_faces(frames, 112, "auto")
    assert crops.shape == (6, 112, 112, 3) and counts == {"haar": 0, "center": 6}
    assert (crops[..., 2] == 255).all()
    with pytest.raises(ValueError, match="no face"):
        crop_faces(frames, 112, "haar")

    class FakeCascade:  # "detects" a 40x40 face at x 0..40, y 0..40 in frames 1 and 2 only
        calls = 0

        def detectMultiScale(self, gray, **kw):
            i = FakeCascade.calls
            FakeCascade.calls += 1
            return np.array([[0, 0, 40, 40], [150, 60, 10, 10]]) if i in (1, 2) else ()

    frames[:, 0:40, 0:40] = (255, 0, 0)  # the "face" is red
    monkeypatch.setattr(faces, "_get_cascade", lambda: FakeCascade())
    crops, counts = crop_faces(frames, 64, "haar", detect_every=1)
    # causal: frame 0 comes before the first detection (centre); later frames keep the latest box
    assert counts == {"haar": 5, "center": 1} and crops.shape == (6, 64, 64, 3)
    assert (crops[0, ..., 2] == 255).all()
    assert (crops[1:, 24:40, 24:40, 0] > 200).all()  # crop centred on the red face, margin around it
    FakeCascade.calls = 0
    crops, counts = crop_faces(frames, 64, "auto", max_gap=1, detect_every=1)  # frames 4, 5 too far from a detection
    assert counts == {"haar": 3, "center": 3}
    assert media.crop_method(counts) == "mixed"
    assert (crops[4:, ..., 2] == 255).all()
    assert crop_faces(np.zeros((0, 50, 50, 3), np.uint8))[0].shape == (0, 112, 112, 3)
    with pytest.raises(ValueError):
        crop_faces(frames, 64, "eyes")


def test_detection_runs_on_every_kth_frame_only(monkeypatch):
    frames = np.zeros((10, 120, 120, 3), np.uint8)
    seen = []

    class CountingCascade:
        def detectMultiScale(self, gray, **kw):
            seen.append(1)
            return np.array([[40, 40, 40, 40]])

    monkeypatch.setattr(faces, "_get_cascade", lambda: CountingCascade())
    _, counts = crop_faces(frames, 64, "auto", detect_every=4)
    assert len(seen) == 3  # frames 0, 4 and 8 (causal: the last frame is not special)
    assert counts == {"haar": 10, "center": 0}  # frames between detections reuse the latest box
    seen.clear()

    class LateCascade:  # no face until frame 2: searched on every frame until then, then every 4th
        def detectMultiScale(self, gray, **kw):
            seen.append(1)
            return np.array([[40, 40, 40, 40]]) if len(seen) >= 3 else ()

    monkeypatch.setattr(faces, "_get_cascade", lambda: LateCascade())
    _, counts = crop_faces(frames, 64, "auto", detect_every=4)
    assert len(seen) == 3 + 2  # frames 0, 1, 2 (search), then 4 and 8
    assert counts == {"haar": 8, "center": 2}


def test_real_haar_cascade_loads_and_finds_nothing_in_noise():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (2, 240, 320, 3), dtype=np.uint8)
    _, counts = crop_faces(frames)
    assert counts["haar"] + counts["center"] == 2
    assert faces._get_cascade() is faces._get_cascade()


def test_errors_name_the_file(files, tmp_path):
    missing = tmp_path / "missing.mp4"
    with pytest.raises(MediaError, match="missing.mp4: file not found"):
        decode_clip(missing)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match="junk.mp4"):
        decode_clip(junk)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty.mp4: empty file"):
        decode_audio(empty)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(files["av"].read_bytes()[: files["av"].stat().st_size // 2])
    with pytest.raises(MediaError, match="truncated.mp4"):
        decode_clip(truncated)
    faststart = tmp_path / "faststart.mp4"  # index first: opens, then the media data runs out
    with av.open(str(files["av"])) as src, av.open(str(faststart), "w", options={"movflags": "faststart"}) as dst:
        out = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = out[packet.stream.index]
                dst.mux(packet)
    data = faststart.read_bytes()
    for frac in (0.05, 0.5):
        cut = tmp_path / f"cut{int(frac * 100)}.mp4"
        cut.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(MediaError, match=f"cut{int(frac * 100)}.mp4: (no decodable|decoding failed)"):
            decode_clip(cut)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 50)
    with pytest.raises(MediaError, match="notes.wav"):
        decode_audio(text)
    with pytest.raises(MediaError, match="not a regular file"):
        decode_clip(tmp_path)
    with pytest.raises(ValueError):
        decode_clip(files["av"], face_crop="nose")
    e = pickle.loads(pickle.dumps(MediaError("a.mp4", "why")))  # survives multiprocessing
    assert str(e) == "a.mp4: why" and e.path == "a.mp4"
