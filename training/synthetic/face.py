"""Cartoon talking-face renderer for the synthetic corpus (OpenCV drawing, RGB uint8 frames).

``render_face`` draws one clip: a head on a coloured background with hair, ears, eyes (openness,
blinks), brows (height, slant), nose and a mouth whose curvature comes from the emotion and whose
opening follows THIS clip's speech envelope (``track`` from ``synthetic_audio.synth_speech``), so the
lips move with the voice. The head translates and rolls a little over time. Per-clip nuisance:
head position / scale, lighting gain / gradient / flicker, pixel noise.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << SHIFT
AA = cv2.LINE_AA

SKIN = ((241, 194, 160), (224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172), (234, 192, 134))
HAIR = ((30, 25, 20), (90, 60, 35), (160, 120, 60), (200, 170, 110), (130, 50, 25), (120, 120, 120))
IRIS = ((70, 45, 25), (60, 100, 140), (70, 110, 70), (40, 30, 25))


def face_identity(rng: np.random.Generator, male: bool, size: int) -> dict:
    """An actor's face: geometry (fractions of head half-axes), colours, hair style, expression bias."""

    def jitter(c, s):
        return tuple(int(np.clip(v + rng.normal(0, s), 0, 255)) for v in c)

    hsv = np.array([[[rng.integers(0, 180), rng.integers(40, 120), rng.integers(110, 220)]]], np.uint8)
    bg = tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])
    skin = jitter(SKIN[rng.integers(len(SKIN))], 8)
    return {
        "male": male,
        "a": size * rng.uniform(0.27, 0.32),  # head half-width (px)
        "b": size * rng.uniform(0.34, 0.38),  # head half-height (px)
        "eye_dx": rng.uniform(0.36, 0.42),
        "eye_y": rng.uniform(-0.12, -0.05),
        "eye_w": rng.uniform(0.17, 0.21),
        "eye_h": rng.uniform(0.085, 0.11),
        "brow_gap": rng.uniform(0.14, 0.17),
        "brow_len": rng.uniform(0.40, 0.48),
        "brow_thick": rng.uniform(2.0, 3.2),
        "mouth_y": rng.uniform(0.42, 0.50),
        "mouth_w": rng.uniform(0.36, 0.44),
        "hairline": rng.uniform(0.44, 0.54),
        "skin": skin,
        "hair": jitter(HAIR[rng.integers(len(HAIR))], 10),
        "iris": IRIS[rng.integers(len(IRIS))],
        "bg": bg,
        "cloth": tuple(int(v) for v in rng.integers(30, 220, 3)),
        "lip": tuple(int(v * f) for v, f in zip(skin, (0.62, 0.32, 0.38))),  # dark red: contrast on any skin
        "tilt": rng.normal(0.0, 2.0),  # habitual head roll (deg)
        # habitual expression: as large as the weak within-pair differences, so those stay weak cues
        "curve_bias": rng.normal(0.0, 0.05),
        "brow_bias": rng.normal(0.0, 0.012),
        "eye_scale": float(np.exp(rng.normal(0.0, 0.06))),
    }


def _blinks(rng: np.random.Generator, n: int) -> np.ndarray:
    out = np.ones(n)
    for _ in range(rng.poisson(0.9)):
        k = int(rng.integers(0, max(n - 4, 1)))
        out[k : k + 4] = np.minimum(out[k : k + 4], [0.5, 0.1, 0.15, 0.6][: len(out[k : k + 4])])
    return out


def _motion(rng: np.random.Generator, t: np.ndarray, amp: float) -> np.ndarray:
    """Smooth random motion: sum of 3 sinusoids (0.3-1.5 Hz), RMS about ``amp``."""
    f = rng.uniform(0.3, 1.5, 3)
    ph = rng.uniform(0, 2 * np.pi, 3)
    w = rng.uniform(0.5, 1.0, 3)
    return amp * np.sqrt(2.0 / np.sum(w**2)) * np.sum(w[:, None] * np.sin(2 * np.pi * f[:, None] * t + ph[:, None]), 0)


class _Pose:
    """Maps face-local coordinates (px, relative to head centre) to fixed-point image coordinates."""

    def __init__(self, cx: float, cy: float, roll_deg: float):
        self.cx, self.cy, self.deg = cx, cy, roll_deg
        r = math.radians(roll_deg)
        self.c, self.s = math.cos(r), math.sin(r)

    def pts(self, x, y) -> np.ndarray:
        x, y = np.asarray(x, float), np.asarray(y, float)
        out = np.empty((x.size, 2))
        out[:, 0] = self.cx + x * self.c - y * self.s
        out[:, 1] = self.cy + x * self.s + y * self.c
        return np.rint(out * _ONE).astype(np.int32)

    def pt(self, x: float, y: float) -> tuple[int, int]:
        return (
            int((self.cx + x * self.c - y * self.s) * _ONE + 0.5),
            int((self.cy + x * self.s + y * self.c) * _ONE + 0.5),
        )

    def ellipse(self, img, x, y, ax, ay, color, thickness=-1, start=0, end=360):
        axes = (max(int(ax * _ONE + 0.5), 1), max(int(ay * _ONE + 0.5), 1))
        cv2.ellipse(img, self.pt(x, y), axes, self.deg, start, end, color, thickness, AA, SHIFT)


def _background(face: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """Backdrop (float32): actor colour with a per-clip tint, vertical ramp and horizontal light gradient."""
    bg = np.array(face["bg"], np.float32) * np.exp(rng.normal(0.0, 0.05, 3)).astype(np.float32)
    ramp = np.linspace(1.08, 0.88, size, dtype=np.float32)[:, None, None]
    grad = 1.0 + rng.uniform(-0.08, 0.08) * np.linspace(-1.0, 1.0, size, dtype=np.float32)[None, :, None]
    return bg[None, None, :] * ramp * grad


def render_face(
    cues: dict, face: dict, track: dict, n_frames: int, fps: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Render ``n_frames`` RGB frames [T, size, size, 3] uint8 of the talking face."""
    t = np.arange(n_frames) / fps
    scale = size / 128.0
    a = face["a"] * np.exp(rng.normal(0.0, 0.04))
    b = face["b"] * a / face["a"]
    cx0 = size / 2 + rng.normal(0.0, 2.5 * scale)
    cy0 = size * 0.53 + rng.normal(0.0, 2.0 * scale) + cues["head_drop"] * b
    motion = cues["head_motion"]
    dx = _motion(rng, t, 1.2 * scale * motion)
    dy = _motion(rng, t, 0.8 * scale * motion)
    roll = face["tilt"] + rng.normal(0.0, 1.5) + _motion(rng, t, 1.5 * motion)
    # speech-driven mouth: lips lead the sound by ~30 ms; vowel sets jaw opening and rounding
    ts = t + 0.03
    env = np.interp(ts, track["t"], track["env"])
    jaw = np.interp(ts, track["t"], track["jaw"])
    rnd = np.interp(ts, track["t"], track["round"])
    opening = b * (cues["mouth_rest"] + cues["mouth_open"] * env * (0.45 + 0.55 * jaw))
    mouth_hw = a * face["mouth_w"] * cues["mouth_width"] * (1.0 - 0.22 * rnd)
    curve = cues["mouth_curve"] + face["curve_bias"]
    eye_open = cues["eye_open"] * face["eye_scale"] * _blinks(rng, n_frames)
    brow = b * (cues["brow_raise"] + face["brow_bias"])
    slant = b * cues["brow_slant"]
    gaze = rng.normal(0.0, 0.25, 2) * a * face["eye_w"]

    # lighting nuisance: per-clip gain + offset with a slow flicker, applied to the colours and the
    # backdrop before drawing (cheap); sensor noise from a fixed bank of noise images
    light = np.exp(rng.normal(0.0, 0.05)) * (
        1.0 + 0.02 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t + rng.uniform(0.0, 2 * np.pi))
    )
    offset = float(rng.normal(0.0, 4.0))
    bg = _background(face, size, rng)
    pos_noise, neg_noise = _noise_bank(size)
    noise_idx = rng.integers(0, len(pos_noise), n_frames)
    palette = {
        "skin": face["skin"],
        "skin_dark": tuple(v * 0.85 for v in face["skin"]),
        "line_dark": tuple(v * 0.45 for v in face["skin"]),
        "hair": face["hair"],
        "brow": tuple(0.5 * min(h, k) for h, k in zip(face["hair"], face["skin"])),  # darker than the skin
        "lip": face["lip"],
        "iris": face["iris"],
        "cloth": face["cloth"],
        "white": (245, 245, 240),
        "pupil": (15, 10, 10),
        "mouth": (60, 20, 25),
    }
    ex, ey = face["eye_dx"] * a, face["eye_y"] * b
    ew, eh = face["eye_w"] * a, face["eye_h"] * b
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    xs = np.linspace(-1.0, 1.0, 11)
    for k in range(n_frames):
        img = frames[k]
        cv2.convertScaleAbs(bg, img, float(light[k]), offset)
        col = {n: tuple(min(max(v * light[k] + offset, 0.0), 255.0) for v in c) for n, c in palette.items()}
        skin, skin_dark, hair, lip = col["skin"], col["skin_dark"], col["hair"], col["lip"]
        P = _Pose(cx0 + dx[k], cy0 + dy[k], roll[k])
        body = _Pose(cx0 + 0.3 * dx[k], size * 1.16, 0.0)
        body.ellipse(img, 0, 0, size * 0.52, size * 0.30, col["cloth"])
        neck = P.pts([-0.38 * a, 0.38 * a, 0.42 * a, -0.42 * a], [0.5 * b, 0.5 * b, 1.6 * b, 1.6 * b])
        cv2.fillPoly(img, [neck], skin_dark, AA, SHIFT)
        if face["male"]:
            P.ellipse(img, 0, -0.07 * b, 1.06 * a, 1.03 * b, hair)
        else:
            P.ellipse(img, 0, 0.18 * b, 1.24 * a, 1.15 * b, hair)
        for side in (-1, 1):
            P.ellipse(img, side * 0.98 * a, -0.02 * b, 0.15 * a, 0.22 * b, skin_dark)
        P.ellipse(img, 0, 0, a, b, skin)
        hl = face["hairline"] * b
        P.ellipse(img, 0, -hl, 1.0 * a, b - hl + 0.05 * b, hair, -1, 180, 360)
        # eyes
        eo = max(eye_open[k], 0.06)
        for side in (-1, 1):
            x0 = side * ex
            P.ellipse(img, x0, ey, ew, eh * eo, col["white"])
            ir = 0.5 * ew
            P.ellipse(img, x0 + gaze[0], ey + gaze[1] * eo, ir, min(ir, eh * eo), col["iris"])
            P.ellipse(img, x0 + gaze[0], ey + gaze[1] * eo, 0.45 * ir, min(0.45 * ir, eh * eo), col["pupil"])
            P.ellipse(img, x0, ey, ew, eh * eo, col["line_dark"], 1)
            # brows: inner end moved by the slant (+ = inner raised), whole brow by brow height
            by = ey - face["brow_gap"] * b - brow
            bl = face["brow_len"] * a
            inner, outer = side * (ex - 0.5 * bl), side * (ex + 0.5 * bl)
            pts = P.pts([inner, side * ex, outer], [by - slant, by - 0.05 * b - 0.3 * slant, by + 0.01 * b])
            cv2.polylines(img, [pts], False, col["brow"], max(int(round(face["brow_thick"] * scale)), 1), AA, SHIFT)
        # nose
        nose = P.pts([0.0, 0.07 * a, -0.06 * a], [0.02 * b, 0.24 * b, 0.27 * b])
        cv2.polylines(img, [nose], False, skin_dark, max(int(round(1.5 * scale)), 1), AA, SHIFT)
        # mouth: parabola through the corners (curvature) and lips parted by the opening
        my, hw = face["mouth_y"] * b, mouth_hw[k]
        mx = xs * hw
        corner = -curve * hw * xs**2
        body_open = 1.0 - xs**2
        upper = P.pts(mx, my + corner - 0.3 * opening[k] * body_open)
        lower = P.pts(mx, my + corner + 0.7 * opening[k] * body_open)
        if opening[k] > 0.6 * scale:
            cv2.fillPoly(img, [np.concatenate([upper, lower[::-1]])], col["mouth"], AA, SHIFT)
        th = max(int(round(2.6 * scale)), 1)
        cv2.polylines(img, [upper], False, lip, th, AA, SHIFT)
        cv2.polylines(img, [lower], False, lip, th, AA, SHIFT)

        cv2.add(img, pos_noise[noise_idx[k]], img)
        cv2.subtract(img, neg_noise[noise_idx[k]], img)
    return frames


_NOISE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _noise_bank(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed bank of sensor-noise images (sd 2 grey levels) as (positive, negative) uint8 parts.

    Clips pick frames from it by index (fast and deterministic: the bank has its own fixed seed).
    """
    if size not in _NOISE:
        n = np.rint(np.random.default_rng(20240229).standard_normal((24, size, size, 3)) * 2.0)
        _NOISE[size] = (np.clip(n, 0, 255).astype(np.uint8), np.clip(-n, 0, 255).astype(np.uint8))
    return _NOISE[size]
