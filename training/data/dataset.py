"""Window datasets over the cache: every clip cut into the geometry's windows."""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

from avemo.contract import media
from avemo.contract.geometry import WindowGeometry
from avemo.training.data.cache import CachedClip, load_clip_arrays

# training-time augmentation of the frames: "basic" = flip, shift, brightness/contrast (``augment``);
# "identity" = basic + what changes between people and not between emotions (``identity_augment``)
VIDEO_AUGMENTS = ("basic", "identity")


def augment(audio: np.ndarray, frames: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Training-only augmentation of one window (shapes unchanged).

    audio [S]: gain in [0.8, 1.25]. frames [F, H, W, 3]: horizontal flip (p = 0.5), a shift of up to
    8 px, brightness/contrast jitter -- the face crop varies like this between
    recordings, the emotion does not.
    """
    audio = audio * np.float32(rng.uniform(0.8, 1.25))
    if frames.size == 0:
        return audio, frames
    f = frames[:, :, ::-1] if rng.random() < 0.5 else frames
    dy, dx = (int(v) for v in rng.integers(-8, 9, size=2))
    f = np.roll(f, (dy, dx), axis=(1, 2))  # the border that wraps around is background
    contrast, brightness = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
    lut = np.clip((np.arange(256, dtype=np.float32) - 128.0) * contrast + 128.0 + brightness, 0, 255).astype(np.uint8)
    f = lut[f]  # brightness/contrast through a 256-entry look-up table
    return audio, f


def hue_rotation(angle: float) -> npt.NDArray[np.float64]:
    """3x3 RGB matrix rotating hue by ``angle`` radians about the grey axis (keeps luminance roughly)."""
    c, s = math.cos(angle), math.sin(angle)
    k = np.full((3, 3), 1.0 / 3.0)
    cross = np.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3.0)
    return (c * np.eye(3) + (1.0 - c) * k + s * cross).astype(np.float32)


def identity_augment(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What differs between people but not between emotions, one draw per window [F, H, W, 3] uint8:

    colour: hue rotated by any angle, saturation x [0.4, 1.4], per-channel gain x [0.85, 1.15], grey
    (p = 0.2) -- skin, hair, eyes, clothes and backdrop colours carry identity only;
    geometry: scale x [0.85, 1.2] with aspect x [0.9, 1.1] (head size and shape), roll +- 12 deg,
    shift +- 10 px, one affine warp for all frames (border replicated).
    """
    if frames.size == 0:
        return frames
    n, h, w, _ = frames.shape
    sat = rng.uniform(0.4, 1.4) if rng.random() >= 0.2 else 0.0
    grey = np.full((3, 3), 1.0 / 3.0, np.float32)
    colour = hue_rotation(rng.uniform(0.0, 2.0 * math.pi))
    colour = grey + sat * (colour - grey)  # saturation about the grey axis
    colour = colour * rng.uniform(0.85, 1.15, size=(3, 1)).astype(np.float32)  # output channel gains
    scale, aspect = rng.uniform(0.85, 1.2), rng.uniform(0.9, 1.1)
    angle = math.radians(rng.uniform(-12.0, 12.0))
    sx, sy = scale * math.sqrt(aspect), scale / math.sqrt(aspect)
    ca, sa = math.cos(angle), math.sin(angle)
    lin = np.array([[ca * sx, -sa * sy], [sa * sx, ca * sy]])
    centre = np.array([w / 2.0, h / 2.0])
    shift = rng.uniform(-10.0, 10.0, size=2)
    warp = np.hstack([lin, (centre + shift - lin @ centre)[:, None]]).astype(np.float32)  # [2, 3]
    out = np.empty_like(frames)
    for k in range(n):
        cv2.warpAffine(frames[k], warp, (w, h), out[k], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # every pixel times the 3x3 colour matrix, rounded and saturated to uint8 (rows of all frames at once)
    return cv2.transform(out.reshape(n * h, w, 3), colour).reshape(frames.shape)


class WindowDataset(Dataset):
    """Item: audio [S] f32, frames [F, 112, 112, 3] u8, mask [2] f32, label int, clip int, start float.

    Evaluation uses the fixed window starts of ``geometry.window_starts`` (as the client does);
    training draws each window's start uniformly inside the clip (augmentation), same count per clip,
    and augments it (``augment``, plus ``identity_augment`` with ``video_augment="identity"``).
    """

    def __init__(
        self,
        clips: list[CachedClip],
        labels: list[int],
        geometry: WindowGeometry,
        train: bool = False,
        seed: int = 0,
        video_augment: str = "basic",
    ):
        if video_augment not in VIDEO_AUGMENTS:
            raise ValueError(f"video_augment must be one of {', '.join(VIDEO_AUGMENTS)}, got {video_augment!r}")
        self.geometry, self.train, self.labels = geometry, train, list(labels)
        self.video_augment = video_augment
        self.clips = clips
        self.arrays = [load_clip_arrays(c) for c in clips]
        self.index = [(i, s) for i, c in enumerate(clips) for s in geometry.window_starts(c.duration)]
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int, seed: int = 0) -> None:
        self.rng = np.random.default_rng([seed, epoch])

    def __getitem__(self, k: int) -> dict:
        i, start = self.index[k]
        clip = self.clips[i]
        if self.train:
            span = max(clip.duration - self.geometry.window_seconds, 0.0)
            start = float(self.rng.uniform(0.0, span)) if span > 0 else 0.0
        audio, frames = self.arrays[i]
        a, f = media.window_arrays(audio, frames, self.geometry, start)
        if self.train:
            a, f = augment(a, f, self.rng)
            if self.video_augment == "identity":
                f = identity_augment(f, self.rng)
        mask = np.array([float(clip.has_audio), float(clip.has_video)], dtype=np.float32)
        return {
            "audio": torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)),
            "frames": torch.from_numpy(np.ascontiguousarray(f, dtype=np.uint8)),
            "mask": torch.from_numpy(mask),
            "label": self.labels[i],
            "clip": i,
            "start": start,
        }
