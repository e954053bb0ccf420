"""Window datasets over the cache: every clip cut into the geometry's windows."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from avemo.contract import media
from avemo.contract.geometry import WindowGeometry
from avemo.training.data.cache import CachedClip, load_clip_arrays


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


class WindowDataset(Dataset):
    """Item: audio [S] f32, frames [F, 112, 112, 3] u8, mask [2] f32, label int, clip int, start float.

    Evaluation uses the fixed window starts of ``geometry.window_starts`` (as the client does);
    training draws each window's start uniformly inside the clip (augmentation), same count per clip.
    """

    def __init__(self, clips: list[CachedClip], labels: list[int], geometry: WindowGeometry, train: bool = False,
                 seed: int = 0):
        self.geometry, self.train, self.labels = geometry, train, list(labels)
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
        mask = np.array([float(clip.has_audio), float(clip.has_video)], dtype=np.float32)
        return {"audio": torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)),
                "frames": torch.from_numpy(np.ascontiguousarray(f, dtype=np.uint8)),
                "mask": torch.from_numpy(mask), "label": self.labels[i], "clip": i, "start": start}
