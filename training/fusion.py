"""Fusion heads. Each maps (audio embedding, video embedding, modality mask) to class logits and
the served ``modality_weights`` [B, 2] = (audio share, video share) of the prediction.

Builders are registered in ``FUSION_BUILDERS`` (a small dict instead of a framework).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def classifier(dim_in: int, dim_hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim_hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(dim_hidden, num_classes))


class GatedFusion(nn.Module):
    """Scalar sigmoid gate g in [0, 1] over the two embeddings.

    g = sigmoid(W [h_a; h_v] + b), initialised so g ~= ``gate_init_audio`` (video favoured).
    The head sees [g * h_a ; (1 - g) * h_v]. ``modality_weights`` = (g, 1 - g): the audio and video
    share of the fused representation. The mask is honoured exactly: only audio present -> g = 1,
    only video present -> g = 0.
    """

    def __init__(self, dim: int, num_classes: int, dropout: float, gate_init_audio: float = 0.3):
        super().__init__()
        self.gate = nn.Linear(2 * dim, 1)
        nn.init.normal_(self.gate.weight, std=0.01)
        nn.init.constant_(self.gate.bias, math.log(gate_init_audio / (1.0 - gate_init_audio)))
        self.head = classifier(2 * dim, dim, num_classes, dropout)

    def forward(self, h_a: torch.Tensor, h_v: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m_a, m_v = mask[:, 0:1], mask[:, 1:2]  # [B, 1] each
        g = torch.sigmoid(self.gate(torch.cat([h_a, h_v], dim=1)))  # [B, 1]
        g = g * m_a * m_v + m_a * (1.0 - m_v)  # both: g, audio only: 1, video only: 0
        logits = self.head(torch.cat([g * h_a, (1.0 - g) * h_v], dim=1))  # [B, C]
        weights = torch.cat([g, (1.0 - g) * m_v], dim=1)  # [B, 2]
        return logits, weights


class UnimodalHead(nn.Module):
    """Baseline using one modality; ``modality_weights`` is the constant one-hot of that modality."""

    def __init__(self, dim: int, num_classes: int, dropout: float, modality: str):
        super().__init__()
        self.index = 0 if modality == "audio" else 1
        self.head = classifier(dim, dim, num_classes, dropout)

    def forward(self, h_a: torch.Tensor | None, h_v: torch.Tensor | None, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = h_a if self.index == 0 else h_v
        present = mask[:, self.index : self.index + 1]  # [B, 1]
        logits = self.head(h * present)
        weights = torch.zeros_like(mask)
        weights[:, self.index : self.index + 1] = present
        return logits, weights


FUSION_BUILDERS = {
    "gated": lambda cfg: GatedFusion(cfg.embed_dim, cfg.num_classes, cfg.dropout, cfg.gate_init_audio),
    "audio": lambda cfg: UnimodalHead(cfg.embed_dim, cfg.num_classes, cfg.dropout, "audio"),
    "video": lambda cfg: UnimodalHead(cfg.embed_dim, cfg.num_classes, cfg.dropout, "video"),
}
