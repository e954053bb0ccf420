"""Window datasets over the cache: every clip cut into the geometry's windows."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from contract import media
from contract.geometry import WindowGeometry
from training.cache import CachedClip, load_clip_arrays


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
        mask = np.array([float(clip.has_audio), float(clip.has_video)], dtype=np.float32)
        return {"audio": torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)),
                "frames": torch.from_numpy(np.ascontiguousarray(f, dtype=np.uint8)),
                "mask": torch.from_numpy(mask), "label": self.labels[i], "clip": i, "start": start}
