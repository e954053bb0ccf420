"""In-graph audio front end: waveform -> normalised log-mel spectrogram (exported with the model)."""

from __future__ import annotations

import math

import torch
from torch import nn


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> torch.Tensor:
    """HTK-style triangular mel filterbank, shape [n_mels, n_fft // 2 + 1]."""
    fmax = fmax or sample_rate / 2
    hz_to_mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)  # noqa: E731
    mels = torch.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)  # [n_mels + 2]
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)  # [n_freq]
    lower, center, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (bins[None] - lower) / (center - lower)
    down = (upper - bins[None]) / (upper - center)
    return torch.clamp(torch.minimum(up, down), min=0.0)  # [n_mels, n_freq]


class LogMel(nn.Module):
    """audio [B, S] float32 -> normalised log-mel [B, 1, n_mels, T], T = S // hop + 1."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, mean: float, std: float):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("fb", mel_filterbank(sample_rate, n_fft, n_mels), persistent=False)
        self.register_buffer("norm", torch.tensor([mean, std], dtype=torch.float32))

    def set_normalisation(self, mean: float, std: float) -> None:
        self.norm.copy_(torch.tensor([mean, std]))

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """Un-normalised log-mel [B, n_mels, T]."""
        spec = torch.stft(
            audio, self.n_fft, self.hop_length, window=self.window, center=True, pad_mode="reflect", return_complex=True
        )  # [B, n_freq, T]
        power = spec.real**2 + spec.imag**2
        mel = torch.matmul(self.fb, power)  # [B, n_mels, T]
        return torch.log(mel + 1e-6)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = (self.log_mel(audio) - self.norm[0]) / self.norm[1]
        return x.unsqueeze(1)  # [B, 1, n_mels, T]
