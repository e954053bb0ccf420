"""Causal face tracking and square face crops (numpy + OpenCV, no torch).

One ``FaceTracker`` is fed the sampled RGB frames of a clip or a live source in order and returns one
crop per frame, looking only at the past: the Haar cascade runs on every ``detect_every``-th frame,
frames in between reuse the latest detection, and the box is averaged over the last
``SMOOTH_FRAMES`` frames. Until the first face is found the cascade runs on every frame (search),
so a face missed at the start costs one frame, not ``detect_every``. The training cache and the
streaming client both crop through it, so a window's crops do not depend on whether the clip was
decoded whole or streamed.

    tracker = FaceTracker(size=112)
    crop = tracker.push(frame)            # uint8 [H, W, 3] RGB -> uint8 [112, 112, 3]
    tracker.counts                        # {"haar": n, "center": m} frames per crop kind
    tracker.last_box                      # FaceBox(x, y, side, kind): the square that crop came from
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

FACE_CROP_METHODS = ("auto", "haar", "center")
FACE_MARGIN = 0.3  # crop side = detected face side * (1 + FACE_MARGIN)
DETECT_MAX_SIDE = 320  # Haar detection runs on a grayscale copy downscaled to this longest side
SMOOTH_FRAMES = 5  # the box is the mean of the last SMOOTH_FRAMES frames' boxes (past only)
DETECT_EVERY = 4  # the cascade runs on every 4th sampled frame (2 Hz at 8 fps); others reuse the latest box

_CASCADE = None  # lazily loaded cv2.CascadeClassifier, see _get_cascade()


def _get_cascade():
    global _CASCADE
    if _CASCADE is None:
        if not hasattr(cv2, "CascadeClassifier"):
            raise RuntimeError(
                f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 moved it out of the main "
                "package); install the pinned opencv-python-headless==4.11.0.86, or use face_crop='center'"
            )
        xml = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"  # type: ignore[attr-defined]  # not in cv2's stubs
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


@dataclass(frozen=True)
class FaceBox:
    """The square of one frame that was cropped (frame pixels): ``frame[y : y + side, x : x + side]``.

    ``kind``: "haar" (a tracked face box) or "center" (no face: the centre square fallback)."""

    x: int
    y: int
    side: int
    kind: str


def square_box(h: int, w: int, cx: float, cy: float, side: float) -> tuple[int, int, int]:
    """(x0, y0, s): the square of side ``side`` centred on (cx, cy), shrunk and shifted to fit a [h, w] frame."""
    s = int(round(min(side, h, w)))
    x0 = int(round(min(max(cx - s / 2, 0), w - s)))
    y0 = int(round(min(max(cy - s / 2, 0), h - s)))
    return x0, y0, s


def _square(frame: np.ndarray, x0: int, y0: int, s: int, size: int) -> np.ndarray:
    return cv2.resize(frame[y0 : y0 + s, x0 : x0 + s], (size, size), interpolation=cv2.INTER_AREA)


class NoFaceError(ValueError):
    """face crop "haar" was asked for, and no frame of the clip had a face."""


def crop_method(counts: dict) -> str:
    """ "haar", "center" or "mixed" from ``{"haar": n, "center": m}``."""
    if counts.get("haar", 0) and counts.get("center", 0):
        return "mixed"
    return "haar" if counts.get("haar", 0) else "center"


class FaceTracker:
    """Causal face crops, one frame at a time (see the module docstring).

    method "auto": Haar boxes where a face was seen (within ``max_gap`` frames of the latest detection
    if given), centre square elsewhere (before the first detection, after a too-long gap).
    "haar": the same, but ``finish()`` raises NoFaceError if no frame had a face. "center": centre only.
    """

    def __init__(
        self,
        size: int,
        method: str = "auto",
        detect_every: int = DETECT_EVERY,
        max_gap: int | None = None,
        smooth: int = SMOOTH_FRAMES,
    ):
        if method not in FACE_CROP_METHODS:
            raise ValueError(f"face crop method must be one of {FACE_CROP_METHODS}, got {method!r}")
        self.size, self.method = int(size), method
        self.detect_every, self.max_gap = max(1, int(detect_every)), max_gap
        self.counts = {"haar": 0, "center": 0}
        self.detections = 0  # frames where the cascade found a face
        self._i = 0  # index of the next frame
        self._last: tuple[int, tuple] | None = None  # (frame index, box) of the latest detection
        self._recent: deque = deque(maxlen=max(1, int(smooth)))  # boxes of the last frames (past only)
        self.last_box: FaceBox | None = None  # the square the latest crop was cut from (annotation, tests)

    def push(self, frame: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] RGB -> uint8 [size, size, 3] crop of this frame."""
        i, self._i = self._i, self._i + 1
        h, w = frame.shape[:2]
        box = None
        if self.method != "center":
            if i % self.detect_every == 0 or self._last is None:  # search every frame until a first face
                found = _detect(frame)
                if found is not None:
                    self._last = (i, found)
                    self.detections += 1
            if self._last is not None and (self.max_gap is None or i - self._last[0] <= self.max_gap):
                self._recent.append(self._last[1])
                box = tuple(np.mean(np.asarray(self._recent, np.float64), axis=0))
            else:
                self._recent.clear()
        kind = "haar" if box is not None else "center"
        self.counts[kind] += 1
        x0, y0, s = square_box(h, w, *(box if box is not None else (w / 2, h / 2, min(h, w))))
        self.last_box = FaceBox(x0, y0, s, kind)
        return _square(frame, x0, y0, s, self.size)

    def finish(self) -> None:
        """End of the stream: for method "haar", a clip in which no face was ever found is an error."""
        if self.method == "haar" and self.detections == 0:
            raise NoFaceError(f"no face detected in any of {self._i} frames")


def crop_faces(
    frames,
    size: int = 112,
    method: str = "auto",
    max_gap: int | None = None,
    detect_every: int = DETECT_EVERY,
) -> tuple[np.ndarray, dict]:
    """Crops of a whole frame array: uint8 [T, H, W, 3] -> (uint8 [T, size, size, 3], {"haar": n, "center": m}).

    The same ``FaceTracker`` run over the frames in order (so frame t's crop never depends on later frames).
    """
    tracker = FaceTracker(size, method, detect_every=detect_every, max_gap=max_gap)  # checks method first
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i, frame in enumerate(frames):
        out[i] = tracker.push(frame)
    if len(frames):
        tracker.finish()
    return out, dict(tracker.counts)
