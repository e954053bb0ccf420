"""In-graph audio front end: waveform -> normalised log-mel spectrogram (exported with the model).

The short-time Fourier transform is a strided ``conv1d`` with a fixed Hann-windowed DFT basis, not
``torch.stft``: the exported graph then holds a Conv node every execution provider runs natively
(onnxruntime's ``STFT`` op took 78% of the graph's CPU time for n_fft 400 and has no CUDA kernel;
TorchScript and TensorRT get a plain convolution too). The front end has no learned weights: the
basis, window and filterbank are non-persistent buffers rebuilt from the config, so checkpoints written
with the ``torch.stft`` front end load and export unchanged. ``LogMel.log_mel_stft`` keeps the
``torch.stft`` reference the tests compare against (max |diff| of the log-mel ``STFT_PARITY_ATOL``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

STFT_PARITY_ATOL = (
    5e-3  # max |log-mel(conv DFT) - log-mel(torch.stft)| allowed; measured 5e-5 on noise, 1.7e-3 on a pure
)
# tone (its near-empty bins sit at the log floor, where float32 rounding of the two transforms differs most)
LOG_EPS = 1e-6  # log(mel + LOG_EPS): the floor of silent bins


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


def dft_basis(n_fft: int) -> torch.Tensor:
    """Hann-windowed real DFT as conv1d weights [2 * n_freq, 1, n_fft]: rows 0..n_freq-1 the real
    parts (cos), rows n_freq.. the imaginary parts (-sin) of the one-sided spectrum, n_freq = n_fft // 2 + 1.
    Built in float64 and rounded once, so the basis is as exact as float32 allows."""
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    angle = 2.0 * math.pi * k[:, None] * n[None, :] / n_fft  # [n_freq, n_fft]
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)  # torch.stft's default window
    basis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window  # [2 * n_freq, n_fft]
    return basis.to(torch.float32).unsqueeze(1)


class LogMel(nn.Module):
    """audio [B, S] float32 -> normalised log-mel [B, 1, n_mels, T], T = S // hop + 1."""

    basis: torch.Tensor  # buffers (register_buffer)
    fb: torch.Tensor
    norm: torch.Tensor

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, mean: float, std: float):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.n_freq = n_fft // 2 + 1
        self.register_buffer("basis", dft_basis(n_fft), persistent=False)  # [2 * n_freq, 1, n_fft]
        self.register_buffer("fb", mel_filterbank(sample_rate, n_fft, n_mels), persistent=False)  # [n_mels, n_freq]
        self.register_buffer("norm", torch.tensor([mean, std], dtype=torch.float32))

    def set_normalisation(self, mean: float, std: float) -> None:
        self.norm.copy_(torch.tensor([mean, std]))

    def power(self, audio: torch.Tensor) -> torch.Tensor:
        """|STFT|^2 [B, n_freq, T] with torch.stft's framing (center=True, reflect padding)."""
        padded = F.pad(audio.unsqueeze(1), (self.n_fft // 2, self.n_fft // 2), mode="reflect")  # [B, 1, S + n_fft]
        spec = F.conv1d(padded, self.basis, stride=self.hop_length)  # [B, 2 * n_freq, T]
        real, imag = spec[:, : self.n_freq], spec[:, self.n_freq :]
        return real * real + imag * imag

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """Un-normalised log-mel [B, n_mels, T]."""
        mel = torch.matmul(self.fb, self.power(audio))  # [B, n_mels, T]
        return torch.log(mel + LOG_EPS)

    def log_mel_stft(self, audio: torch.Tensor) -> torch.Tensor:
        """The same log-mel through ``torch.stft`` (the reference; not used by the model)."""
        window = torch.hann_window(self.n_fft, device=audio.device, dtype=audio.dtype)
        spec = torch.stft(
            audio, self.n_fft, self.hop_length, window=window, center=True, pad_mode="reflect", return_complex=True
        )  # [B, n_freq, T]
        mel = torch.matmul(self.fb, spec.real**2 + spec.imag**2)
        return torch.log(mel + LOG_EPS)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = (self.log_mel(audio) - self.norm[0]) / self.norm[1]
        return x.unsqueeze(1)  # [B, 1, n_mels, T]
