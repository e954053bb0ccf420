"""Missing- and noisy-modality evaluation: a dataset wrapper that perturbs the windows a model sees.

``PerturbedDataset(ds, drop="audio"|"video"|None, noise_snr_db=None, seed=0)`` wraps a
``WindowDataset`` (or anything with the same items) and is accepted wherever the dataset is, e.g.
``avemo.training.evaluation.predict.evaluate(model, PerturbedDataset(ds, drop="audio"), labels)``:

- ``drop``: that modality's input is zeroed (audio samples = 0.0, frames = 0) AND its
  ``modality_mask`` entry is set to 0, so the model sees exactly what a client without that
  modality would send;
- ``noise_snr_db``: white Gaussian noise added to the audio of every window at that SNR in dB,
  from the window's own signal power (mean of squares); a silent window stays silent. The noise of
  window k depends only on (seed, k): deterministic and independent of batch size or order.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

MODALITIES = ("audio", "video")


def noise_for_snr(signal: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White Gaussian noise with power = signal power / 10^(snr_db / 10) (same shape, float32)."""
    signal = np.asarray(signal, dtype=np.float64)
    power = float(np.mean(signal**2)) if signal.size else 0.0
    sigma = np.sqrt(power / (10.0 ** (snr_db / 10.0)))
    return (rng.standard_normal(signal.shape) * sigma).astype(np.float32)


def add_noise_snr(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """``audio`` + white Gaussian noise at ``snr_db`` dB relative to ``audio``'s own power."""
    audio = np.asarray(audio, dtype=np.float32)
    return (audio + noise_for_snr(audio, snr_db, rng)).astype(np.float32)


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """Measured SNR in dB of ``noisy`` against ``clean``."""
    clean = np.asarray(clean, dtype=np.float64)
    noise = np.asarray(noisy, dtype=np.float64) - clean
    return float(10.0 * np.log10(np.mean(clean**2) / max(np.mean(noise**2), 1e-30)))


def describe(drop: str | None = None, noise_snr_db: float | None = None) -> str:
    """Human-readable condition: "clean", "audio dropped", "audio noise at 10 dB SNR", ..."""
    parts = []
    if drop:
        parts.append(f"{drop} dropped")
    if noise_snr_db is not None:
        parts.append(f"audio noise at {noise_snr_db:g} dB SNR")
    return ", ".join(parts) or "clean"


def condition(drop: str | None = None, noise_snr_db: float | None = None, seed: int = 0) -> dict:
    """The condition as recorded in results: drop, noise_snr_db, seed and the description."""
    return {"drop": drop, "noise_snr_db": noise_snr_db, "seed": seed, "description": describe(drop, noise_snr_db)}


class PerturbedDataset(Dataset):
    """``base`` with one modality dropped and/or noise added to the audio (see the module docstring).

    Other attributes (``clips``, ``labels``, ``index``, ``geometry``, ...) are those of ``base``.
    """

    def __init__(self, base, drop: str | None = None, noise_snr_db: float | None = None, seed: int = 0):
        if drop not in (None, *MODALITIES):
            raise ValueError(f"drop must be one of {MODALITIES} or None, got {drop!r}")
        self.base, self.drop, self.noise_snr_db, self.seed = base, drop, noise_snr_db, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str):
        if name == "base":  # not set yet (e.g. during unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def condition(self) -> dict:
        return condition(self.drop, self.noise_snr_db, self.seed)

    def __getitem__(self, k: int) -> dict:
        item = dict(self.base[k])
        audio = torch.as_tensor(item["audio"], dtype=torch.float32)
        frames = torch.as_tensor(item["frames"])
        mask = torch.as_tensor(item["mask"], dtype=torch.float32).clone()
        if self.noise_snr_db is not None:
            rng = np.random.default_rng([int(self.seed), int(k)])
            audio = torch.from_numpy(add_noise_snr(audio.numpy(), self.noise_snr_db, rng))
        if self.drop == "audio":
            audio, mask[0] = torch.zeros_like(audio), 0.0
        elif self.drop == "video":
            frames, mask[1] = torch.zeros_like(frames), 0.0
        item.update(audio=audio, frames=frames, mask=mask)
        return item
