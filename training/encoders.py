"""Light audio and video encoders (CPU friendly). Each maps one modality to an embedding [B, D]."""
from __future__ import annotations

import torch
from torch import nn

from training.frontend import LogMel


def conv_block(c_in: int, c_out: int, stride: int = 1, pool: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class AudioCNN(nn.Module):
    """audio [B, S] float32 PCM -> embedding [B, D]. Log-mel is computed inside (part of the export)."""

    def __init__(self, frontend: LogMel, channels: tuple[int, ...], embed_dim: int):
        super().__init__()
        self.frontend = frontend
        blocks, c = [], 1
        for width in channels:
            blocks.append(conv_block(c, width))
            c = width
        self.blocks = nn.Sequential(*blocks)
        self.proj = nn.Linear(2 * c, embed_dim)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.frontend(audio))  # [B, C, n_mels / 2^k, T / 2^k]
        x = x.mean(dim=2)  # [B, C, T']  average over frequency
        x = torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1)  # [B, 2C]  mean + max over time
        return self.proj(x)  # [B, D]


class VideoCNN(nn.Module):
    """frames [B, F, H, W, 3] uint8 RGB -> embedding [B, D].

    A per-frame CNN on 56x56 (2x average-pooled) crops, a temporal 1-D conv over frame embeddings,
    then mean + max pooling over time.
    """

    def __init__(self, channels: tuple[int, ...], embed_dim: int):
        super().__init__()
        blocks, c = [], 3
        for i, width in enumerate(channels):
            last = i == len(channels) - 1
            blocks.append(conv_block(c, width, stride=2 if i == 0 else 1, pool=not last))
            c = width
        self.blocks = nn.Sequential(*blocks)
        self.temporal = nn.Sequential(nn.Conv1d(c, c, 3, padding=1), nn.ReLU(inplace=True))
        self.proj = nn.Linear(2 * c, embed_dim)
        self.register_buffer("rgb_mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1), persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, f, h, w, _ = frames.shape
        x = frames.reshape(b * f, h, w, 3).permute(0, 3, 1, 2).float() / 255.0  # [B*F, 3, H, W]
        x = (nn.functional.avg_pool2d(x, 2) - self.rgb_mean) / self.rgb_std  # [B*F, 3, H/2, W/2]
        x = self.blocks(x).mean(dim=(2, 3))  # [B*F, C]
        x = x.reshape(b, f, -1).transpose(1, 2)  # [B, C, F]
        x = x + self.temporal(x)
        x = torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1)  # [B, 2C]
        return self.proj(x)  # [B, D]
