"""Media decoding shared by the training cache and the streaming client (numpy, PyAV, OpenCV only).

Pipeline for one file::

    decode_clip(path)                      -> DecodedClip
      = decode audio  -> float32 [N] mono at geometry.sample_rate      (PyAV + AudioResampler)
      + decode video  -> uint8 [T, H, W, 3] RGB at geometry.video_fps  (frame nearest each k/fps)
      + crop_faces    -> uint8 [T, 112, 112, 3] (Haar face box, smoothed; centre-square fallback)
    make_windows(clip)                     -> [Window(start, audio [S], frames [F,112,112,3], mask [2])]

``window_arrays`` is the slicing primitive used both by ``make_windows`` and by the training cache
(which stores whole decoded clips), so windows are cut identically everywhere.

Every decoding failure (missing file, not a media file, no streams, truncated data) raises
``MediaError`` naming the file and the reason, never a raw PyAV exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np

from avemo.contract.geometry import DEFAULT_GEOMETRY, WindowGeometry

FACE_CROP_METHODS = ("auto", "haar", "center")
FACE_MARGIN = 0.3  # crop side = detected face side * (1 + FACE_MARGIN)
DETECT_MAX_SIDE = 320  # Haar detection runs on a grayscale copy downscaled to this longest side
SMOOTH_FRAMES = 5  # centred moving average of the face box over this many frames
DETECT_EVERY = 4  # run the cascade on every 4th sampled frame (2 Hz at 8 fps); others reuse the nearest box

_CASCADE = None  # lazily loaded cv2.CascadeClassifier, see _get_cascade()


class MediaError(Exception):
    """A media file could not be decoded. ``str(e)`` is ``"<path>: <reason>"``."""

    def __init__(self, path, reason: str = ""):
        super().__init__(str(path), reason)  # args kept as (path, reason) so it pickles across processes
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.reason else self.path


@dataclass
class DecodedClip:
    path: str
    audio: np.ndarray  # float32 [N] mono at geometry.sample_rate; [0] if no audio
    frames: np.ndarray  # uint8 [T, face, face, 3] RGB crops at geometry.video_fps; [0, face, face, 3] if no video
    crop_method: str  # "haar", "center" or "mixed"
    crop_counts: dict = field(default_factory=dict)  # {"haar": n, "center": m} frames per crop kind
    duration: float = 0.0  # seconds, max of audio and video durations
    has_audio: bool = False
    has_video: bool = False


@dataclass
class Window:
    start: float  # seconds from the clip start
    audio: np.ndarray  # float32 [S]
    frames: np.ndarray  # uint8 [F, face, face, 3]
    mask: np.ndarray  # float32 [2]: (audio present, video present)


# ----------------------------------------------------------------------------------------- decoding
def _open(path):
    p = Path(path)
    if not p.exists():
        raise MediaError(p, "file not found")
    if not p.is_file():
        raise MediaError(p, "not a regular file")
    if p.stat().st_size == 0:
        raise MediaError(p, "empty file (0 bytes)")
    try:
        return av.open(str(p), mode="r")
    except Exception as e:  # av.FFmpegError, OSError, UnicodeDecodeError, ...
        raise MediaError(p, f"cannot open as audio/video ({type(e).__name__}: {e})") from e


class _FrameSampler:
    """Picks, for each target time k/fps, the decoded frame whose timestamp is nearest."""

    def __init__(self, fps: float, step: float):
        self.fps, self.step = float(fps), step  # step: source frame duration (s)
        self.k, self.n, self.t0, self.last_t = 0, 0, None, 0.0
        self.prev = None  # (t, frame)
        self.out: list[np.ndarray] = []
        self._cache = (None, None)

    def _rgb(self, frame) -> np.ndarray:
        if self._cache[0] is not frame:
            self._cache = (frame, frame.to_ndarray(format="rgb24"))
        return self._cache[1]

    def push(self, frame) -> None:
        t = frame.time if frame.time is not None else self.n * self.step
        self.n += 1
        if self.t0 is None:
            self.t0 = t
        t -= self.t0
        while self.k / self.fps <= t + 1e-9:
            target = self.k / self.fps
            near_prev = self.prev is not None and target - self.prev[0] <= t - target  # tie: earlier frame
            self.out.append(self._rgb(self.prev[1] if near_prev else frame))
            self.k += 1
        self.prev = (t, frame)
        self.last_t = max(self.last_t, t)

    def finish(self) -> tuple[np.ndarray | None, float]:
        if self.prev is None:
            return None, 0.0
        duration = self.last_t + self.step
        while self.k / self.fps < duration - 1e-6:
            self.out.append(self._rgb(self.prev[1]))
            self.k += 1
        return np.stack(self.out), duration


def _decode(path, sample_rate: int | None, fps: float | None):
    """One demux pass. Returns (audio float32 [N], frames uint8 [T,H,W,3] or None, video duration)."""
    container = _open(path)
    try:
        with container:
            a_all, v_all = list(container.streams.audio), list(container.streams.video)
            if not a_all and not v_all:
                raise MediaError(path, "no audio or video stream")
            astream = a_all[0] if sample_rate and a_all else None
            vstream = v_all[0] if fps and v_all else None
            chunks: list[np.ndarray] = []
            sampler = None
            if astream is not None:
                resampler = av.AudioResampler(format="flt", layout="mono", rate=int(sample_rate))
            if vstream is not None:
                vstream.thread_type = "AUTO"
                rate = vstream.average_rate or vstream.guessed_rate
                sampler = _FrameSampler(fps, 1.0 / float(rate) if rate else 1.0 / float(fps))
            streams = [s for s in (astream, vstream) if s is not None]
            if not streams:
                return np.zeros(0, np.float32), None, 0.0
            for packet in container.demux(*streams):
                is_audio = astream is not None and packet.stream.index == astream.index
                for frame in packet.decode():
                    if is_audio:
                        chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
                    else:
                        sampler.push(frame)
            if astream is not None:
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    except MediaError:
        raise
    except Exception as e:  # truncated / corrupt data inside the stream
        raise MediaError(path, f"decoding failed ({type(e).__name__}: {e})") from e
    audio = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    frames, vdur = sampler.finish() if sampler is not None else (None, 0.0)
    if audio.size == 0 and frames is None:
        raise MediaError(path, "no decodable audio or video data (truncated or corrupt?)")
    return audio, frames, vdur


def decode_audio(path, sample_rate: int = DEFAULT_GEOMETRY.sample_rate) -> np.ndarray:
    """Mono float32 [N] PCM in [-1, 1] at ``sample_rate`` (.wav, .mp4, ...); [0] if no audio stream."""
    return _decode(path, sample_rate, None)[0]


def decode_video_frames(path, fps: float = DEFAULT_GEOMETRY.video_fps) -> tuple[np.ndarray, float]:
    """RGB uint8 [T, H, W, 3] sampled at a fixed ``fps`` by timestamp, and the video duration (s).

    Frame k is the source frame nearest to time k/fps (source fps does not matter; frames are
    repeated or skipped as needed), T = ceil(duration * fps). No video stream -> ([0,0,0,3], 0.0).
    """
    _, frames, duration = _decode(path, None, fps)
    return (np.zeros((0, 0, 0, 3), np.uint8), 0.0) if frames is None else (frames, duration)


# --------------------------------------------------------------------------------------- face crop
def _get_cascade():
    global _CASCADE
    if _CASCADE is None:
        if not hasattr(cv2, "CascadeClassifier"):
            raise RuntimeError(
                f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 moved it out of the main "
                "package); install the pinned opencv-python-headless==4.11.0.86, or use face_crop='center'"
            )
        xml = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        cascade = cv2.CascadeClassifier(xml)
        if cascade.empty():
            raise RuntimeError(f"cannot load OpenCV Haar cascade {xml}")
        _CASCADE = cascade
    return _CASCADE


def _detect(frame: np.ndarray):
    """Largest face in an RGB frame as (cx, cy, side) in frame pixels (side includes margin), or None."""
    h, w = frame.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(gray)
    min_side = max(24, int(0.15 * min(gray.shape)))  # faces smaller than 15% of the frame are ignored
    faces = _get_cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    if len(faces) == 0:
        return None
    x, y, fw, fh = max((tuple(map(float, f)) for f in faces), key=lambda b: b[2] * b[3])
    return (x + fw / 2) / scale, (y + fh / 2) / scale, max(fw, fh) * (1 + FACE_MARGIN) / scale


def _square(frame: np.ndarray, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    h, w = frame.shape[:2]
    s = int(round(min(side, h, w)))
    x0 = int(round(min(max(cx - s / 2, 0), w - s)))
    y0 = int(round(min(max(cy - s / 2, 0), h - s)))
    return cv2.resize(frame[y0 : y0 + s, x0 : x0 + s], (size, size), interpolation=cv2.INTER_AREA)


def crop_faces(
    frames,
    size: int = DEFAULT_GEOMETRY.face_size,
    method: str = "auto",
    max_gap: int | None = None,
    detect_every: int = DETECT_EVERY,
):
    """Square face crops: uint8 [T, H, W, 3] RGB -> (uint8 [T, size, size, 3], {"haar": n, "center": m}).

    "auto": Haar cascade on every ``detect_every``-th frame (grayscale, downscaled), largest face, box with margin,
    frames without a detection reuse the nearest detected box (within ``max_gap`` frames if given),
    box smoothed over time; frames with no usable box get the centre square. "haar": the same but
    raises ValueError if no face is found in any frame. "center": centre square only.
    """
    if method not in FACE_CROP_METHODS:
        raise ValueError(f"face crop method must be one of {FACE_CROP_METHODS}, got {method!r}")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    t_count, h, w = frames.shape[:3]
    if t_count == 0:
        return np.zeros((0, size, size, 3), np.uint8), {"haar": 0, "center": 0}
    use_haar = np.zeros(t_count, bool)
    boxes = None
    if method != "center":
        probe = sorted(set(range(0, t_count, max(1, detect_every))) | {t_count - 1})  # every k-th frame + last
        found = [(i, b) for i, b in ((i, _detect(frames[i])) for i in probe) if b is not None]
        if not found and method == "haar":
            raise ValueError(f"no face detected in any of {t_count} frames")
        if found:
            idx = np.array([i for i, _ in found])
            det = np.array([b for _, b in found], np.float64)  # [D, 3] cx, cy, side
            gaps = np.abs(np.arange(t_count)[:, None] - idx[None, :])  # [T, D] frame distance
            j = gaps.argmin(1)  # nearest detection (earlier one on ties)
            dist, boxes = gaps[np.arange(t_count), j], det[j]
            k = min(SMOOTH_FRAMES, t_count)
            padded = np.pad(boxes, ((k // 2, k - 1 - k // 2), (0, 0)), mode="edge")
            boxes = np.stack([np.convolve(padded[:, j], np.ones(k) / k, mode="valid") for j in range(3)], 1)
            use_haar = dist <= max_gap if max_gap is not None else np.ones(t_count, bool)
    centre = (w / 2, h / 2, min(h, w))
    out = np.empty((t_count, size, size, 3), np.uint8)
    for i, frame in enumerate(frames):
        out[i] = _square(frame, *(boxes[i] if use_haar[i] else centre), size)
    n_haar = int(use_haar.sum())
    return out, {"haar": n_haar, "center": t_count - n_haar}


def _crop_method(counts: dict) -> str:
    if counts.get("haar", 0) and counts.get("center", 0):
        return "mixed"
    return "haar" if counts.get("haar", 0) else "center"


def decode_clip(path, geometry: WindowGeometry = DEFAULT_GEOMETRY, face_crop: str = "auto") -> DecodedClip:
    """Decode a .mp4/.wav into 16 kHz mono audio and 8 fps 112x112 RGB face crops (see DecodedClip)."""
    if face_crop not in FACE_CROP_METHODS:
        raise ValueError(f"face_crop must be one of {FACE_CROP_METHODS}, got {face_crop!r}")
    audio, raw, vdur = _decode(path, geometry.sample_rate, geometry.video_fps)
    size = geometry.face_size
    if raw is None:
        frames, counts = np.zeros((0, size, size, 3), np.uint8), {"haar": 0, "center": 0}
    else:
        try:
            frames, counts = crop_faces(raw, size, face_crop)
        except ValueError as e:
            raise MediaError(path, str(e)) from e
    return DecodedClip(
        path=str(path),
        audio=audio,
        frames=frames,
        crop_method=_crop_method(counts),
        crop_counts=counts,
        duration=max(audio.size / geometry.sample_rate, vdur),
        has_audio=audio.size > 0,
        has_video=len(frames) > 0,
    )


# ----------------------------------------------------------------------------------------- windows
def window_arrays(audio, frames, geometry: WindowGeometry = DEFAULT_GEOMETRY, start: float = 0.0):
    """Cut one window at ``start`` seconds: (float32 [S], uint8 [F, H, W, 3]).

    audio float32 [N] (may be empty) and frames uint8 [T, H, W, 3] (may be empty / None) are whole
    clips at geometry rates. Audio past the end is zero; frames past the end repeat the clip's last
    frame; a missing modality gives zeros (frames then [F, face, face, 3]).
    """
    n_s, n_f = geometry.window_samples, geometry.frames_per_window
    out_a = np.zeros(n_s, np.float32)
    if audio is not None and len(audio):
        a0 = int(round(start * geometry.sample_rate))
        seg = np.asarray(audio, np.float32)[a0 : a0 + n_s]
        out_a[: len(seg)] = seg
    if frames is None or len(frames) == 0:
        return out_a, np.zeros((n_f, geometry.face_size, geometry.face_size, 3), np.uint8)
    f0 = int(round(start * geometry.video_fps))
    seg = frames[f0 : f0 + n_f]
    if len(seg) < n_f:
        seg = np.concatenate([seg, np.repeat(frames[-1:], n_f - len(seg), axis=0)])
    return out_a, np.ascontiguousarray(seg, dtype=np.uint8)


def make_windows(clip: DecodedClip, geometry: WindowGeometry = DEFAULT_GEOMETRY) -> list[Window]:
    """All windows of a clip at ``geometry.window_starts(clip.duration)``, zero-padded, with masks."""
    mask = np.array([clip.has_audio, clip.has_video], np.float32)
    out = []
    for start in geometry.window_starts(clip.duration):
        audio, frames = window_arrays(clip.audio, clip.frames, geometry, start)
        out.append(Window(start=float(start), audio=audio, frames=frames, mask=mask.copy()))
    return out
