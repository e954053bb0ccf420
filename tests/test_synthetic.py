"""Tests of the synthetic corpus generator (training/synthetic*.py): layout, MP4 format, determinism, cues."""

from __future__ import annotations

import dataclasses
import itertools
import json
from functools import cache

import av
import cv2
import numpy as np
import pytest

from avemo.contract.labels import EMOTIONS_8
from avemo.training.data.ravdess import RavdessName
from avemo.training.synthetic import corpus as syn

E = {name: i + 1 for i, name in enumerate(EMOTIONS_8)}  # name -> RAVDESS code


@cache
def clip(emotion: str, actor: int = 1, statement: int = 1, repetition: int = 1, intensity: int = 1, seed: int = 0):
    return syn.render_clip(E[emotion], intensity, statement, repetition, actor, seed)


def active_rms(audio: np.ndarray) -> float:
    """RMS over 20 ms frames louder than -30 dB re the loudest frame (the speech part)."""
    fr = audio[: len(audio) // 960 * 960].reshape(-1, 960)
    e = np.sqrt((fr**2).mean(1))
    return float(np.sqrt(np.mean(e[e > e.max() * 10 ** (-30 / 20)] ** 2)))


def median_pitch(audio: np.ndarray, sr: int = 48_000) -> float:
    """Median f0 (Hz) of voiced 40 ms frames, by normalised autocorrelation at 16 kHz."""
    x = audio[: len(audio) // 3 * 3].reshape(-1, 3).mean(1)  # crude 16 kHz
    sr //= 3
    n, hop = 640, 320
    lo, hi = sr // 500, sr // 60
    f0s = []
    for s in range(0, len(x) - n, hop):
        f = x[s : s + n] - x[s : s + n].mean()
        if np.sqrt(np.mean(f**2)) < 0.2 * np.sqrt(np.mean(x**2)):
            continue
        spec = np.fft.rfft(f, 2 * n)
        ac = np.fft.irfft(np.abs(spec) ** 2)[:n]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:
            f0s.append(sr / lag)
    assert len(f0s) > 10, "no voiced frames found"
    return float(np.median(f0s))


def log_spectrum(audio: np.ndarray) -> np.ndarray:
    """Long-term average log power spectrum of the speech (64 bands up to 8 kHz) + loudness."""
    fr = audio[: len(audio) // 1024 * 1024].reshape(-1, 1024) * np.hanning(1024)
    p = np.abs(np.fft.rfft(fr, axis=1)) ** 2
    keep = p.sum(1) > 0.05 * p.sum(1).max()
    spec = p[keep].mean(0)[:171]  # 0 .. 8 kHz
    return 10 * np.log10(spec.reshape(-1, 9).mean(1) + 1e-10)  # 19 bands, dB (absolute level kept)


def lip_stats(frames: np.ndarray) -> tuple[float, float]:
    """(corner lift in px, + = smile; mouth height in px while open) measured from the pixels.

    Lips and mouth interior are much redder than skin (G/R well below the skin's), so they are found
    relative to the median skin ratio of the lower face; a parabola through them gives the curvature.
    """
    reg = frames[:, 72:106, 36:92].astype(np.float32)
    ratio = reg[..., 1] / (reg[..., 0] + 1.0)
    lifts, heights = [], []
    for k in range(len(reg)):
        mask = (ratio[k] < 0.8 * np.median(ratio[k])).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if n < 2:
            continue
        mask = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))  # the mouth: largest blob
        ys, xs = np.nonzero(mask)
        if len(xs) < 15:
            continue
        half = (xs.max() - xs.min()) / 2
        c2 = np.polyfit(xs - (xs.max() + xs.min()) / 2, ys, 2)[0]
        lifts.append(-c2 * half**2)
        cols = mask[:, mask.any(0)].sum(0)
        heights.append(cols.mean())
    assert len(lifts) > len(reg) // 2, "mouth not found"
    return float(np.median(lifts)), float(np.percentile(heights, 90))


# ---------------------------------------------------------------------------------------- plan / names
def test_corpus_plan_follows_ravdess_rules():
    plan = syn.corpus_plan(1)
    assert len(plan) == 60
    counts = {e: sum(p["emotion"] == e for p in plan) for e in range(1, 9)}
    assert counts == {1: 4, **{e: 8 for e in range(2, 9)}}
    assert {p["intensity"] for p in plan if p["emotion"] == 1} == {1}
    assert len({p["name"] for p in plan}) == 60
    for p in plan:
        parts = p["name"].removesuffix(".mp4").split("-")
        assert len(parts) == 7 and all(len(x) == 2 and x.isdigit() for x in parts)
        assert [int(x) for x in parts] == [1, 1, p["emotion"], p["intensity"], p["statement"], p["repetition"], 1]
        assert p["relpath"] == f"Actor_01/{p['name']}"
    assert len(syn.corpus_plan(3)) == 180
    assert {p["actor"] for p in syn.corpus_plan(3)} == {1, 2, 3}
    sub = syn.corpus_plan(2, emotions=["neutral", 5], statements=(1,), repetitions=(2,), intensities=(2,))
    assert [p["name"] for p in sub] == ["01-01-05-02-01-02-01.mp4", "01-01-05-02-01-02-02.mp4"]


def test_clip_name_and_parse():
    """clip_name writes RAVDESS names; the reader's RavdessName.parse reads them back field by field."""
    assert syn.clip_name(3, 2, 1, 2, 12) == "01-01-03-02-01-02-12.mp4"
    assert dataclasses.asdict(RavdessName.parse(syn.clip_name(3, 2, 1, 2, 12))) == {
        "modality": 1,
        "vocal_channel": 1,
        "emotion": 3,
        "intensity": 2,
        "statement": 1,
        "repetition": 2,
        "actor": 12,
    }
    with pytest.raises(ValueError):
        RavdessName.parse("01-01-03-02-01-12.mp4")  # 6 fields


# ---------------------------------------------------------------------------------------- files
def test_generate_tiny_corpus_writes_real_mp4(tmp_path):
    tiny = dict(n_actors=2, seed=3, emotions=[1, 5], statements=(2,), repetitions=(1,), intensities=(1,))
    files = syn.generate_corpus(tmp_path, **tiny, progress=False)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "Actor_01/01-01-01-01-02-01-01.mp4",
        "Actor_01/01-01-05-01-02-01-01.mp4",
        "Actor_02/01-01-01-01-02-01-02.mp4",
        "Actor_02/01-01-05-01-02-01-02.mp4",
    ]
    assert all(f.is_file() and f.stat().st_size > 10_000 for f in files)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    meta = json.loads((tmp_path / "corpus.json").read_text())
    assert meta["seed"] == 3 and meta["n_actors"] == 2 and meta["version"] == syn.GENERATOR_VERSION
    assert meta["files"] == [f.relative_to(tmp_path).as_posix() for f in files]
    assert set(meta["cues"]) == set(EMOTIONS_8)

    with av.open(str(files[1])) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        vs, aus = c.streams.video[0], c.streams.audio[0]
        assert vs.codec_context.name == "h264"
        assert (vs.codec_context.width, vs.codec_context.height) == (syn.FRAME_SIZE, syn.FRAME_SIZE)
        assert aus.codec_context.name == "aac" and aus.codec_context.sample_rate == 48_000
        assert 3.0 <= c.duration / 1e6 <= 4.0
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    audio, video = syn.render_clip(5, 1, 2, 1, 1, 3)
    assert len(frames) == len(video)
    # the encoded picture is the rendered one (lossy, but close)
    assert np.abs(frames[10].astype(int) - video[10].astype(int)).mean() < 6
    with av.open(str(files[1])) as c:
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    assert abs(len(pcm) - len(audio)) < 4096 and np.abs(pcm).max() > 0.05

    # existing files are skipped (not rewritten) unless overwrite=True
    mtimes = [f.stat().st_mtime_ns for f in files]
    syn.generate_corpus(tmp_path, **tiny, progress=False)
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_write_mp4_is_atomic_on_failure(tmp_path):
    target = tmp_path / "Actor_01" / "x.mp4"
    with pytest.raises((av.error.FFmpegError, ValueError)):  # refused by the writer or by libx264
        syn.write_mp4(target, np.zeros(48_000, np.float32), np.zeros((24, 127, 128, 3), np.uint8))  # odd height
    assert not target.exists() and not list(target.parent.iterdir())


# ---------------------------------------------------------------------------------------- determinism
def test_render_clip_shapes_and_determinism():
    a1, v1 = syn.render_clip(4, 2, 1, 2, 3, seed=7)
    a2, v2 = syn.render_clip(4, 2, 1, 2, 3, seed=7)
    assert a1.dtype == np.float32 and v1.dtype == np.uint8
    assert v1.ndim == 4 and v1.shape[1:] == (syn.FRAME_SIZE, syn.FRAME_SIZE, 3)
    assert len(a1) == len(v1) * syn.AUDIO_RATE // syn.VIDEO_RATE
    assert 3.0 <= len(a1) / syn.AUDIO_RATE <= 4.0 and np.abs(a1).max() <= 1.0
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(v1, v2)
    a3, v3 = syn.render_clip(4, 2, 1, 2, 3, seed=8)
    assert a3.shape != a1.shape or not np.array_equal(a1, a3)
    assert v3.shape != v1.shape or not np.array_equal(v1, v3)
    a4, _ = syn.render_clip(4, 2, 1, 1, 3, seed=7)  # other repetition: differs
    assert a4.shape != a1.shape or not np.array_equal(a1, a4)


def test_durations_in_range_for_extreme_tempi():
    for emo, actor in itertools.product((4, 6, 3, 8), (1, 2)):  # slowest and fastest speakers
        audio, video = syn.render_clip(emo, 2, 2, 1, actor, 0)
        assert 3.0 <= len(video) / syn.VIDEO_RATE <= 4.0


# ---------------------------------------------------------------------------------------- cue design
def test_pairs_cross_to_identify_all_classes():
    ag = {e: i for i, pair in enumerate(syn.AUDIO_PAIRS) for e in pair}
    vg = {e: i for i, pair in enumerate(syn.VIDEO_PAIRS) for e in pair}
    assert set(ag) == set(vg) == set(EMOTIONS_8)
    assert len({(ag[e], vg[e]) for e in EMOTIONS_8}) == 8


@pytest.mark.parametrize("modality", ["voice", "face"])
def test_cue_table_has_the_pair_structure(modality):
    """In the cue table (z-scored fields), variance between the 4 pair groups dominates within-pair variance."""
    keys = syn.VOICE_CUES if modality == "voice" else syn.FACE_CUES
    pairs = syn.AUDIO_PAIRS if modality == "voice" else syn.VIDEO_PAIRS
    table = np.array([[syn.CUES[e][k] for k in keys] for e in EMOTIONS_8])
    z = {e: row for e, row in zip(EMOTIONS_8, (table - table.mean(0)) / (table.std(0) + 1e-9))}

    def within_over_between(groups) -> float:
        within = np.mean([(z[a] - z[b]) ** 2 / 2 for a, b in groups], axis=0).sum()
        between = np.var([(z[a] + z[b]) / 2 for a, b in groups], axis=0).sum()
        return float(within / between)

    assert within_over_between(pairs) < 0.35
    assert all(np.abs(z[a] - z[b]).sum() > 0 for a, b in pairs)  # a weak within-pair difference exists
    # the other modality's pairs are NOT groups in this modality (crossed design)
    other = syn.VIDEO_PAIRS if modality == "voice" else syn.AUDIO_PAIRS
    assert within_over_between(other) > 1.5


def test_strong_intensity_exaggerates():
    n, a1, a2 = syn.effective_cues(1, 1), syn.effective_cues(5, 1), syn.effective_cues(5, 2)
    for k in ("f0", "energy", "tilt", "mouth_curve", "brow_raise"):
        assert a2[k] - n[k] == pytest.approx(syn.STRONG_GAIN * (a1[k] - n[k]))


def test_voice_cues_present_in_audio():
    for actor in (1, 2):
        rms = {e: active_rms(clip(e, actor)[0]) for e in ("angry", "sad", "happy", "neutral")}
        assert rms["angry"] > 1.5 * rms["sad"], rms
        assert rms["angry"] > rms["neutral"] > rms["sad"], rms
        f0 = {e: median_pitch(clip(e, actor)[0]) for e in ("happy", "sad", "neutral")}
        assert f0["happy"] > 1.15 * f0["sad"], f0
        assert f0["happy"] > 1.15 * f0["neutral"], f0
    # males lower than females
    assert median_pitch(clip("neutral", 1)[0]) * 1.3 < median_pitch(clip("neutral", 2)[0])
    # brightness: angry has more energy above 2 kHz relative to below 1 kHz than sad
    tilt = lambda a: log_spectrum(a)[6:].mean() - log_spectrum(a)[:2].mean()  # noqa: E731
    assert tilt(clip("angry")[0]) > tilt(clip("sad")[0]) + 6


def test_audio_pairs_as_designed():
    """Voice: neutral ~ calm and sad ~ fearful, but neutral far from happy / angry (audio pairs)."""
    wins = 0
    for actor, rep in itertools.product((1, 2), (1, 2)):
        s = {
            e: log_spectrum(clip(e, actor, repetition=rep)[0])
            for e in ("neutral", "calm", "happy", "angry", "sad", "fearful")
        }

        def d(x, y, s=s):
            return np.abs(s[x] - s[y]).mean()

        wins += d("neutral", "calm") < min(d("neutral", "happy"), d("neutral", "angry"), d("neutral", "sad"))
        wins += d("sad", "fearful") < min(d("sad", "neutral"), d("sad", "angry"), d("sad", "happy"))
    assert wins >= 7, wins


def test_face_cues_present_in_video():
    """Smile / frown and the open mouth of surprise / fear are measurable in the rendered pixels."""
    for actor in (1, 2):
        lift = {e: lip_stats(clip(e, actor)[1])[0] for e in ("calm", "happy", "neutral", "disgust", "sad", "angry")}
        assert min(lift["calm"], lift["happy"]) > max(lift["neutral"], lift["disgust"]) + 1.0, lift
        assert min(lift["neutral"], lift["disgust"]) > max(lift["sad"], lift["angry"]) + 1.0, lift
        height = {e: lip_stats(clip(e, actor)[1])[1] for e in ("surprised", "fearful", "neutral", "calm", "sad")}
        assert min(height["surprised"], height["fearful"]) > 1.3 * max(
            height["neutral"], height["calm"], height["sad"]
        ), height


def test_video_pairs_as_designed():
    """Face (measured lip curvature + opening): calm ~ happy, far from sad; disgust ~ neutral, far from calm."""
    wins = 0
    for actor, rep in itertools.product((1, 2), (1, 2)):
        f = {
            e: np.array(lip_stats(clip(e, actor, repetition=rep)[1]))
            for e in ("calm", "happy", "sad", "angry", "neutral", "disgust", "surprised")
        }

        def d(x, y, f=f):
            return np.abs(f[x] - f[y]).sum()

        wins += d("calm", "happy") < min(d("calm", "sad"), d("calm", "neutral"))
        wins += d("sad", "angry") < min(d("sad", "neutral"), d("sad", "calm"))
        wins += d("neutral", "disgust") < min(d("neutral", "surprised"), d("neutral", "calm"), d("neutral", "sad"))
    assert wins >= 10, wins


def test_mouth_moves_with_speech():
    """The mouth region changes more while speaking than in the leading silence."""
    params = syn.clip_params(E["surprised"], 1, 1, 1, 1, 0)
    _, video = clip("surprised")
    t = np.arange(len(video)) / syn.VIDEO_RATE
    region = video[:, 70:110, 34:94].astype(np.float32).mean(-1)
    motion = np.abs(np.diff(region, axis=0)).mean((1, 2))
    speaking = (t[1:] > params["speech_start"] + 0.05) & (t[1:] < params["speech_end"])
    silent = t[1:] < params["speech_start"] - 0.1
    assert silent.sum() >= 3
    assert motion[speaking].mean() > 2 * motion[silent].mean()
