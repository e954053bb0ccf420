"""Deterministic synthetic RAVDESS-style corpus: real MP4 files (H.264 + AAC 48 kHz) with emotion cues.

Layout and names follow RAVDESS: ``ROOT/Actor_XX/01-01-EE-II-SS-RR-XX.mp4`` (audio-video, speech,
emotion 01..08, intensity 01/02, statement 01/02, repetition 01/02, actor). 60 clips per actor:
neutral 2 statements x 2 repetitions at normal intensity, every other emotion 2 x 2 x 2 intensities.
Odd actors are male, even actors female.

Everything is a pure function of (seed, actor, file fields): random numbers come from
``numpy.random.default_rng`` seeded by a SHA-256 hash of those fields (never global state), so the
same seed gives identical audio / frame arrays (the encoded files may differ in metadata).

Voice synthesis lives in ``avemo.training.synthetic.voice``, face rendering in ``avemo.training.synthetic.face``;
all emotion cue numbers are in ``CUES`` below. The CLI is ``avemo corpus``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from avemo.contract.labels import EMOTIONS_8
from avemo.contract.progress import progress as progress_bar
from avemo.training.data.ravdess import RavdessName
from avemo.training.synthetic.face import face_identity, render_face
from avemo.training.synthetic.voice import STATEMENT_SYLLABLES, synth_speech, voice_identity

GENERATOR_VERSION = "1.0.0"
AUDIO_RATE = 48_000  # Hz, AAC audio
VIDEO_RATE = 24  # fps, H.264 video
FRAME_SIZE = 128  # frames are FRAME_SIZE x FRAME_SIZE RGB
STRONG_GAIN = 1.6  # intensity 02 (strong): deviation of every cue from neutral x STRONG_GAIN
# The default corpus (`avemo corpus`, `avemo demo`): RAVDESS's 24 actors, repetition 1 only (30 clips each,
# 720 clips). More people rather than more takes of the same people: with 10 actors x 60 clips, models
# learn the 6 training faces and fail on new ones (the corpus ablation in docs/unseen_people.md).
DEFAULT_ACTORS = 24
DEFAULT_REPETITIONS = (1,)

# ------------------------------------------------------------------------------------------------
# THE CUE TABLE: one dict per emotion, voice cues first, face cues second.
#
# Pair design: each modality alone only tells 4 groups apart; the two groupings are crossed so that
# (audio group, video group) identifies all 8 emotions.
#   AUDIO pairs (voice nearly identical): {neutral, calm} {happy, surprised} {sad, fearful} {angry, disgust}
#       neutral/calm     : mid pitch, flat range, normal tempo, moderate energy, neutral timbre
#       happy/surprised  : high pitch, wide range, fast, loud-ish, bright-ish, raised formants
#       sad/fearful      : quiet, dark (negative tilt), slow, breathy, high jitter/shimmer, tremor, low formants
#       angry/disgust    : loudest, very bright + pressed (low open quotient), low-mid pitch, moderate tempo
#   VIDEO pairs (face nearly identical):  {calm, happy} {surprised, fearful} {sad, angry} {disgust, neutral}
#       calm/happy       : mouth curved up, relaxed brows, open eyes, small head motion
#       surprised/fearful: brows raised, eyes wide, mouth open at rest and wide when speaking, more motion
#       sad/angry        : brows lowered, mouth curved down, head dropped
#       disgust/neutral  : flat mouth, neutral brows, narrowed eyes
# Within a pair only WEAK differences (~1.8 semitones of pitch, ~8 % tempo, ~1 dB level in the voice; small
# curvature / brow slant / eye offsets in the face), comparable to actor-to-actor variation
# (actor f0 sd ~10 %, speaking rate sd ~7 %, habitual smile sd 0.05, brow sd 0.012), so one
# modality alone lands a bit above chance inside its pairs. Checked with the project's AudioCNN /
# VideoCNN (10 epochs, 8 train actors, 3 actor-independent folds of 2 test actors, 2 s windows):
# macro-F1 audio 0.60-0.77, video 0.65-0.72, late fusion of the two 0.94-0.98.
# Mouth opening follows the *normalised* speech envelope, so loudness does not leak into the face.
#
# Voice fields: f0 = pitch multiplier of the actor's base pitch; f0_range = accent excursion (st);
#   jitter / shimmer = per-period relative f0 / amplitude perturbation (sd); energy = loudness factor
#   (RMS of speech); tempo = speaking-rate multiplier; tilt = spectral tilt (dB/octave, + brighter);
#   oq = glottal open quotient (low = pressed, bright); breath = aspiration noise; tremor = 5-6 Hz
#   f0 modulation depth (st); formant = formant-frequency multiplier (smiled / tense vs lax tract).
# Face fields (fractions of head half-width a / half-height b): mouth_curve = corner lift (+ smile,
#   - frown, x mouth half-width); mouth_open = max lip opening while speaking (x b); mouth_rest =
#   opening at rest (x b); mouth_width = mouth width multiplier; brow_raise = brow height (x b, + up);
#   brow_slant = inner brow end (x b, + raised); eye_open = eye openness multiplier;
#   head_motion = head motion multiplier; head_drop = head lowered (x b, + down).
# ------------------------------------------------------------------------------------------------
_VOICE = ("f0", "f0_range", "jitter", "shimmer", "energy", "tempo", "tilt", "oq", "breath", "tremor", "formant")
_FACE = (
    "mouth_curve",
    "mouth_open",
    "mouth_rest",
    "mouth_width",
    "brow_raise",
    "brow_slant",
    "eye_open",
    "head_motion",
    "head_drop",
)
# fmt: off
_VOICE_ROWS = {  # columns: _VOICE; neutral is the reference
    #               f0  range  jitter  shimmer  energy  tempo  tilt    oq  breath  tremor  formant
    "neutral":   (1.00,   2.0,  0.006,    0.04,   0.80,  1.00,  0.0, 0.60,   0.04,   0.00,    1.00),
    "calm":      (0.90,   1.6,  0.006,    0.04,   0.74,  0.90, -0.5, 0.62,   0.06,   0.00,    0.99),
    "happy":     (1.30,   6.5,  0.008,    0.05,   1.10,  1.16,  1.5, 0.54,   0.03,   0.00,    1.07),
    "sad":       (1.02,   2.6,  0.030,    0.10,   0.50,  0.84, -4.0, 0.72,   0.14,   0.30,    0.95),
    "angry":     (0.96,   4.0,  0.012,    0.07,   1.75,  1.00,  6.0, 0.38,   0.02,   0.00,    1.02),
    "fearful":   (1.14,   3.0,  0.034,    0.10,   0.55,  0.93, -3.4, 0.70,   0.15,   0.45,    0.96),
    "disgust":   (0.86,   3.6,  0.012,    0.07,   1.55,  0.92,  5.2, 0.41,   0.03,   0.00,    1.01),
    "surprised": (1.44,   7.5,  0.008,    0.05,   1.18,  1.07,  2.0, 0.52,   0.03,   0.00,    1.08),
}
_FACE_ROWS = {  # columns: _FACE; neutral is the reference
    #             curve  open   rest  width    brow   slant   eye  motion   drop
    "neutral":   ( 0.00, 0.16, 0.000,  1.00,  0.000,  0.000, 0.66,   1.00,  0.00),
    "calm":      ( 0.36, 0.13, 0.000,  1.03,  0.010,  0.000, 1.02,   0.60,  0.00),
    "happy":     ( 0.48, 0.19, 0.020,  1.12,  0.015,  0.000, 0.90,   0.75,  0.00),
    "sad":       (-0.48, 0.13, 0.000,  0.95, -0.065,  0.018, 0.92,   0.70,  0.06),
    "angry":     (-0.44, 0.16, 0.000,  0.95, -0.085, -0.018, 0.86,   0.80,  0.05),
    "fearful":   (-0.08, 0.27, 0.060,  0.98,  0.105,  0.060, 1.40,   1.50, -0.02),
    "disgust":   (-0.12, 0.15, 0.030,  0.92, -0.010, -0.008, 0.58,   1.00,  0.00),
    "surprised": ( 0.00, 0.30, 0.090,  0.85,  0.125,  0.000, 1.50,   1.40, -0.02),
}
# fmt: on
CUES: dict[str, dict[str, float]] = {
    e: dict(zip(_VOICE, _VOICE_ROWS[e])) | dict(zip(_FACE, _FACE_ROWS[e])) for e in _VOICE_ROWS
}
AUDIO_PAIRS = (("neutral", "calm"), ("happy", "surprised"), ("sad", "fearful"), ("angry", "disgust"))
VIDEO_PAIRS = (("calm", "happy"), ("surprised", "fearful"), ("sad", "angry"), ("disgust", "neutral"))
VOICE_CUES, FACE_CUES = _VOICE, _FACE
_POSITIVE = {
    "f0",
    "f0_range",
    "jitter",
    "shimmer",
    "energy",
    "tempo",
    "oq",
    "breath",
    "tremor",
    "formant",
    "mouth_open",
    "mouth_rest",
    "mouth_width",
    "eye_open",
    "head_motion",
}


def _hash_seed(*fields) -> int:
    digest = hashlib.sha256(":".join(str(f) for f in fields).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _rng(*fields) -> np.random.Generator:
    return np.random.default_rng(_hash_seed(*fields))


def clip_name(emotion: int, intensity: int, statement: int, repetition: int, actor: int) -> str:
    """RAVDESS file name ``01-01-EE-II-SS-RR-AA.mp4`` (audio-video, speech); ``RavdessName.parse`` reads it."""
    return RavdessName(1, 1, emotion, intensity, statement, repetition, actor).stem + ".mp4"


def _emotion_code(e) -> int:
    code = EMOTIONS_8.index(e) + 1 if isinstance(e, str) else int(e)
    if not 1 <= code <= 8:
        raise ValueError(f"emotion {e!r} is not 1..8 or a name in EMOTIONS_8")
    return code


def corpus_plan(n_actors: int, emotions=None, statements=(1, 2), repetitions=(1, 2), intensities=(1, 2)) -> list[dict]:
    """The clips to make, RAVDESS rules (neutral only at normal intensity). ``emotions``: codes or names."""
    codes = sorted({_emotion_code(e) for e in emotions}) if emotions is not None else list(range(1, 9))
    plan = []
    for actor in range(1, n_actors + 1):
        for emo in codes:
            for inten in sorted(intensities):
                if emo == 1 and inten != 1:
                    continue
                for st in sorted(statements):
                    for rep in sorted(repetitions):
                        name = clip_name(emo, inten, st, rep, actor)
                        plan.append(
                            {
                                "actor": actor,
                                "emotion": emo,
                                "intensity": inten,
                                "statement": st,
                                "repetition": rep,
                                "name": name,
                                "relpath": f"Actor_{actor:02d}/{name}",
                            }
                        )
    return plan


def effective_cues(emotion: int, intensity: int) -> dict[str, float]:
    """Cue values of an emotion at an intensity: strong = neutral + STRONG_GAIN x (cue - neutral)."""
    base, cue = CUES["neutral"], CUES[EMOTIONS_8[_emotion_code(emotion) - 1]]
    g = STRONG_GAIN if intensity == 2 else 1.0
    out = {k: base[k] + g * (cue[k] - base[k]) for k in cue}
    for k in _POSITIVE:
        out[k] = max(out[k], 0.0 if k in ("jitter", "shimmer", "breath", "tremor", "mouth_rest") else 0.05)
    return out


def actor_identity(actor: int, seed: int) -> dict:
    """Voice and face identity of an actor (odd = male, even = female); same for all its clips."""
    male = actor % 2 == 1
    return {
        "male": male,
        "voice": voice_identity(_rng(seed, "voice", actor), male),
        "face": face_identity(_rng(seed, "face", actor), male, FRAME_SIZE),
    }


def _render(emotion: int, intensity: int, statement: int, repetition: int, actor: int, seed: int):
    emotion, intensity, statement, repetition, actor, seed = (
        _emotion_code(emotion),
        int(intensity),
        int(statement),
        int(repetition),
        int(actor),
        int(seed),
    )
    if statement not in STATEMENT_SYLLABLES:
        raise ValueError(f"statement must be 1 or 2, got {statement}")
    if intensity not in (1, 2):
        raise ValueError(f"intensity must be 1 or 2, got {intensity}")
    cues = effective_cues(emotion, intensity)
    ident = actor_identity(actor, seed)
    fields = (seed, actor, emotion, intensity, statement, repetition)
    audio, track = synth_speech(cues, ident["voice"], statement, _rng(*fields, "audio"), AUDIO_RATE, VIDEO_RATE)
    frames = render_face(cues, ident["face"], track, track["n_frames"], VIDEO_RATE, FRAME_SIZE, _rng(*fields, "video"))
    return audio, frames, cues, ident, track


def render_clip(
    emotion: int, intensity: int, statement: int, repetition: int, actor: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Synthesise one clip: audio float32 [N] at 48 kHz in [-1, 1], video uint8 [T, H, W, 3] RGB at VIDEO_RATE.

    ``N == T * AUDIO_RATE / VIDEO_RATE`` and the clip lasts 3.1-3.95 s.
    """
    audio, frames, *_ = _render(emotion, intensity, statement, repetition, actor, seed)
    return audio, frames


def clip_params(emotion: int, intensity: int, statement: int, repetition: int, actor: int, seed: int) -> dict:
    """The parameters behind one clip (effective cues, actor identity, f0 / tempo / RMS actually used)."""
    _, _, cues, ident, track = _render(emotion, intensity, statement, repetition, actor, seed)
    keep = ("duration", "n_frames", "f0_mean", "tempo", "speech_start", "speech_end", "rms")
    return {"cues": cues, "male": ident["male"], "voice": ident["voice"], **{k: track[k] for k in keep}}


def write_mp4(
    path: Path,
    audio: np.ndarray,
    frames: np.ndarray,
    audio_rate: int = AUDIO_RATE,
    fps: int = VIDEO_RATE,
    crf: int = 23,
) -> None:
    """Write H.264 (yuv420p) + AAC mono MP4 with PyAV; atomic (temporary name, then ``os.replace``)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    _, h, w, _ = frames.shape
    try:
        with av.open(str(tmp), "w", format="mp4") as out:
            vs = out.add_stream("libx264", rate=Fraction(fps), options={"crf": str(crf), "preset": "veryfast"})
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
            vs.codec_context.thread_count = 1
            aus = out.add_stream("aac", rate=audio_rate, layout="mono", options={"aac_coder": "fast"})
            aus.bit_rate = 96_000
            for i, img in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(img, format="rgb24")
                vf.pts = i
                out.mux(vs.encode(vf))
            out.mux(vs.encode())
            pcm = np.clip(np.asarray(audio, np.float32), -1.0, 1.0)[None, :]
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm), format="fltp", layout="mono")
            af.sample_rate, af.pts = audio_rate, 0
            out.mux(aus.encode(af))
            out.mux(aus.encode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _make_one(task: tuple) -> str:
    root, item, seed = task
    audio, frames = render_clip(
        item["emotion"], item["intensity"], item["statement"], item["repetition"], item["actor"], seed
    )
    write_mp4(Path(root) / item["relpath"], audio, frames)
    return item["relpath"]


def _worker_init() -> None:
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # pragma: no cover
        pass


def cue_summary() -> dict:
    """The cue table and pair design, as stored in corpus.json."""
    return {"cues": CUES, "audio_pairs": AUDIO_PAIRS, "video_pairs": VIDEO_PAIRS, "strong_gain": STRONG_GAIN}


def generate_corpus(
    root: Path,
    n_actors: int = 10,
    seed: int = 0,
    *,
    emotions=None,
    statements=(1, 2),
    repetitions=(1, 2),
    intensities=(1, 2),
    jobs: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> list[Path]:
    """Write the corpus under ``root`` (skipping existing files unless ``overwrite``) and ``root/corpus.json``.

    Returns the paths of all planned clips (existing or newly written), in plan order.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    plan = corpus_plan(n_actors, emotions, statements, repetitions, intensities)
    todo = [(str(root), item, seed) for item in plan if overwrite or not (root / item["relpath"]).exists()]
    t0 = time.time()
    with progress_bar(total=len(todo), desc="synthetic corpus", unit="clip", disable=not progress) as bar:
        if jobs > 1 and len(todo) > 1:
            import multiprocessing as mp

            # never fork: the caller may have threads (torch, gRPC, a server) holding locks, and a forked
            # child would wait on them for ever (it did, in `compare --fresh-corpora` under pytest)
            ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
            with ctx.Pool(min(jobs, len(todo)), initializer=_worker_init) as pool:
                for _ in pool.imap_unordered(_make_one, todo, chunksize=2):
                    bar.update(1)
        else:
            for task in todo:
                _make_one(task)
                bar.update(1)
    meta = {
        "generator": "avemo.training.synthetic.corpus",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "n_actors": n_actors,
        "audio_rate": AUDIO_RATE,
        "video_rate": VIDEO_RATE,
        "frame_size": FRAME_SIZE,
        "filters": {
            "emotions": sorted({p["emotion"] for p in plan}),
            "statements": list(statements),
            "repetitions": list(repetitions),
            "intensities": list(intensities),
        },
        "n_files": len(plan),
        "n_written": len(todo),
        "seconds": round(time.time() - t0, 2),
        "files": [p["relpath"] for p in plan],
        **cue_summary(),
    }
    tmp = root / ".corpus.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, root / "corpus.json")
    return [root / p["relpath"] for p in plan]
