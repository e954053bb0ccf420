"""contract.stream: the incremental pipeline gives the cache's windows, each as soon as it is complete, in
bounded memory."""

from __future__ import annotations

import time

import numpy as np
import pytest

from avemo.contract.geometry import DEFAULT_GEOMETRY, WindowGeometry
from avemo.contract.media import ClipStream, MediaError, decode_clip, window_arrays
from avemo.contract.stream import WindowAssembler
from avemo.training.data.cache import build_cache, load_clip_arrays


def _cache_windows(clip, geometry):
    """Windows cut the way training cuts them: from the arrays the cache stored."""
    audio, frames = load_clip_arrays(clip)
    return [(s, *window_arrays(audio, frames, geometry, s)) for s in geometry.window_starts(clip.duration)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory, write_clip):
    d = tmp_path_factory.mktemp("stream_clips")
    return [
        write_clip(d / "a.mp4", seconds=2.2),  # shorter than two default windows
        write_clip(d / "b.mp4", seconds=6.4, fps=24, size=120),  # several windows + an end-aligned tail
        write_clip(d / "c.mp4", seconds=4.0, fps=30, size=64, sr=48000),  # 48 kHz source audio, 30 fps
    ]


@pytest.mark.parametrize("geometry", [DEFAULT_GEOMETRY, WindowGeometry(window_seconds=1.0, hop_seconds=0.5)])
def test_streamed_windows_equal_the_cached_ones(clips, corpus_clip, geometry, tmp_path):
    sources = [*clips, corpus_clip]
    cached, problems = build_cache(sources, tmp_path / "cache", geometry, jobs=1, progress=False)
    assert problems == [] and len(cached) == len(sources)
    for src in sources:
        stream = ClipStream(src, geometry)
        streamed = list(stream)
        want = _cache_windows(cached[str(src.resolve())], geometry)
        assert [w.start for w in streamed] == [s for s, _, _ in want], src.name
        for w, (_, audio, frames) in zip(streamed, want):
            np.testing.assert_array_equal(w.audio, audio)
            np.testing.assert_array_equal(w.frames, frames)
            np.testing.assert_array_equal(w.mask, [1.0, 1.0])
        assert stream.duration == pytest.approx(cached[str(src.resolve())].duration)
        assert stream.crop_method == cached[str(src.resolve())].crop_method


@pytest.fixture(scope="module")
def corpus_clip(tiny_corpus):
    """A generated corpus clip: a drawn face the Haar cascade finds, so tracking is exercised."""
    return sorted(tiny_corpus.rglob("*.mp4"))[0]


def test_corpus_clip_is_tracked_with_haar(corpus_clip):
    clip = decode_clip(corpus_clip)
    assert clip.crop_counts["haar"] > 0


def _feed(asm, seconds, fps=30, sr=48000, size=(72, 96), chunk=0.05):
    """Push ``seconds`` of interleaved media (audio in ``chunk`` s blocks, frames at ``fps``); yields
    (media time pushed, windows emitted by that push)."""
    rng = np.random.default_rng(0)
    t, k = 0.0, 0
    while t < seconds - 1e-9:
        out = list(asm.push_audio(rng.uniform(-0.5, 0.5, int(round(chunk * sr))).astype(np.float32), sr))
        t += chunk
        while k / fps < t - 1e-9:
            img = np.full((*size, 3), (k * 7) % 256, np.uint8)
            out += asm.push_image(k / fps, img)
            k += 1
        yield t, out


def test_window_emitted_as_soon_as_complete_and_memory_is_bounded():
    g = DEFAULT_GEOMETRY
    asm = WindowAssembler(g, face_crop="center")
    emitted, peak_samples, peak_frames = [], 0, 0
    for t, windows in _feed(asm, 120.0):
        for w in windows:
            # the window's audio ends at start + 2 s: emitted by the push that delivered that sample
            assert t - 0.05 - 1e-6 <= w.start + g.window_seconds <= t + 1e-6
            emitted.append(w.start)
        peak_samples = max(peak_samples, asm.n_audio - asm.a_off)
        peak_frames = max(peak_frames, asm.n_frames - asm.f_off)
    tail = asm.finish()
    # the resampler holds back a few samples until flushed, so the window ending exactly at the end
    # of the media comes out of finish(); every other one came out of the push that completed it
    assert emitted == [float(i) for i in range(118)] and [w.start for w in tail] == [118.0]
    # a few windows at most, whatever the length: window + hop + one push of slack
    assert peak_samples <= (g.window_seconds + g.hop_seconds + 0.1) * g.sample_rate
    assert peak_frames <= (g.window_seconds + g.hop_seconds) * g.video_fps + 2


def test_assembler_tail_and_keep_match_whole_clip_cutting():
    g = WindowGeometry(window_seconds=1.0, hop_seconds=0.5)
    streamed, kept = WindowAssembler(g, "center"), WindowAssembler(g, "center", keep=True)
    got, whole = [], []
    for _t, windows in _feed(streamed, 3.7):
        got += windows
    for _t, windows in _feed(kept, 3.7):
        whole += windows
    got += streamed.finish()
    kept.finish()
    clip = kept.clip("x")
    starts = g.window_starts(clip.duration)
    assert [w.start for w in got] == starts and starts[-1] == pytest.approx(clip.duration - 1.0)
    for w in got:
        audio, frames = window_arrays(clip.audio, clip.frames, g, w.start)
        np.testing.assert_array_equal(w.audio, audio)
        np.testing.assert_array_equal(w.frames, frames)


def test_audio_only_and_video_only_sources():
    g = WindowGeometry(window_seconds=1.0, hop_seconds=0.5)
    audio_only = WindowAssembler(g, "center", has_audio=True, has_video=False)
    windows = audio_only.push_audio(np.zeros(16000 * 2, np.int16), 16000) + audio_only.finish()
    assert [w.start for w in windows] == [0.0, 0.5, 1.0]
    assert all((w.mask == [1, 0]).all() and not w.frames.any() for w in windows)
    video_only = WindowAssembler(g, "center", has_audio=False, has_video=True)
    windows = []
    for k in range(24):  # 2 s at 12 fps
        windows += video_only.push_image(k / 12, np.full((40, 40, 3), 200, np.uint8))
    windows += video_only.finish()
    assert [w.start for w in windows] == [0.0, 0.5, 1.0]
    assert all((w.mask == [0, 1]).all() and not w.audio.any() for w in windows)
    with pytest.raises(ValueError, match="uint8"):
        video_only.push_image(0.0, np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="int16"):
        audio_only.push_audio(np.zeros(10, np.int32), 16000)


def test_realtime_paces_the_file_and_stamps_arrival(clips):
    g = WindowGeometry(window_seconds=1.0, hop_seconds=0.5)
    t0 = time.perf_counter()
    stream = ClipStream(clips[0], g, realtime=True)
    windows = []
    for w in stream:
        windows.append((w, time.perf_counter()))
    wall = time.perf_counter() - t0
    assert wall >= 0.85 * stream.duration  # paced like a live source (2.2 s clip), not decoded at once
    origin = windows[0][0].ready_at - windows[0][0].end
    for w, t_out in windows:
        assert w.ready_at == pytest.approx(origin + w.end)  # stamped at its media end
        assert t_out >= w.ready_at - 0.1  # and not handed out long before its media could have arrived


def test_stream_errors_are_media_errors(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 4096)
    with pytest.raises(MediaError, match="bad.mp4"):
        list(ClipStream(bad))
    with pytest.raises(MediaError, match="file not found"):
        list(ClipStream(tmp_path / "none.mp4"))
