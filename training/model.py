"""FusionModel(audio_encoder, video_encoder, fusion) and the builder that makes it from a config."""
from __future__ import annotations

import torch
from torch import nn

from contract.geometry import WindowGeometry
from training.config import ModelConfig
from training.encoders import AudioCNN, VideoCNN
from training.frontend import LogMel
from training.fusion import FUSION_BUILDERS


def modality_dropout(mask: torch.Tensor, p: float) -> torch.Tensor:
    """Drop each present modality with probability p, never both: mask [B, 2] -> [B, 2]."""
    keep = (torch.rand_like(mask) >= p).float()
    both_dropped = (keep.sum(dim=1, keepdim=True) == 0).float()
    pick = nn.functional.one_hot(torch.randint(0, 2, (mask.shape[0],), device=mask.device), 2).float()
    keep = keep + both_dropped * pick
    dropped = mask * keep
    # a window that had only one modality keeps it
    return torch.where(dropped.sum(dim=1, keepdim=True) > 0, dropped, mask)


class FusionModel(nn.Module):
    """audio [B, S] f32, frames [B, F, H, W, 3] u8, modality_mask [B, 2] f32 -> dict of
    logits [B, C], modality_weights [B, 2] and, for fusion models, audio_logits / video_logits [B, C]
    (auxiliary unimodal heads used by the losses and the error analysis)."""

    def __init__(self, audio_encoder: nn.Module | None, video_encoder: nn.Module | None, fusion: nn.Module,
                 num_classes: int, embed_dim: int, modality_dropout: float = 0.0):
        super().__init__()
        self.audio_encoder, self.video_encoder, self.fusion = audio_encoder, video_encoder, fusion
        self.audio_norm = nn.LayerNorm(embed_dim) if audio_encoder is not None else None
        self.video_norm = nn.LayerNorm(embed_dim) if video_encoder is not None else None
        both = audio_encoder is not None and video_encoder is not None
        self.audio_aux = nn.Linear(embed_dim, num_classes) if both else None
        self.video_aux = nn.Linear(embed_dim, num_classes) if both else None
        self.modality_dropout = modality_dropout

    def forward(self, audio: torch.Tensor, frames: torch.Tensor, modality_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = modality_mask
        if self.training and self.modality_dropout > 0 and self.audio_encoder is not None and self.video_encoder is not None:
            mask = modality_dropout(mask, self.modality_dropout)
        h_a = h_v = None
        if self.audio_encoder is not None:
            h_a = self.audio_norm(self.audio_encoder(audio)) * mask[:, 0:1]  # [B, D]
        if self.video_encoder is not None:
            h_v = self.video_norm(self.video_encoder(frames)) * mask[:, 1:2]  # [B, D]
        logits, weights = self.fusion(h_a, h_v, mask)
        out = {"logits": logits, "modality_weights": weights}
        if self.audio_aux is not None:
            out["audio_logits"] = self.audio_aux(h_a)
            out["video_logits"] = self.video_aux(h_v)
        return out


def build_model(cfg: ModelConfig, geometry: WindowGeometry) -> FusionModel:
    """The builder: encoders by what the fusion needs, fusion from ``FUSION_BUILDERS``."""
    if cfg.fusion not in FUSION_BUILDERS:
        raise ValueError(f"unknown fusion {cfg.fusion!r}; expected one of {sorted(FUSION_BUILDERS)}")
    audio_encoder = video_encoder = None
    if cfg.fusion != "video":
        frontend = LogMel(geometry.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels, cfg.logmel_mean, cfg.logmel_std)
        audio_encoder = AudioCNN(frontend, cfg.audio_channels, cfg.embed_dim)
    if cfg.fusion != "audio":
        video_encoder = VideoCNN(cfg.video_channels, cfg.embed_dim)
    return FusionModel(audio_encoder, video_encoder, FUSION_BUILDERS[cfg.fusion](cfg), cfg.num_classes,
                       cfg.embed_dim, cfg.modality_dropout)


class ExportWrapper(nn.Module):
    """Export-only module with the serving contract's signature: -> (probs [B, C], modality_weights [B, 2]).

    Every contract input stays a graph input even for unimodal baselines (the unused one is read
    into a zero-valued term), so every served model has the same signature.
    """

    def __init__(self, model: FusionModel):
        super().__init__()
        self.model = model.eval()

    def forward(self, audio: torch.Tensor, frames: torch.Tensor, modality_mask: torch.Tensor):
        out = self.model(audio, frames, modality_mask)
        probs = torch.softmax(out["logits"], dim=-1)
        touch = (audio[:, :1].sum() + frames[:, :1, :1, :1, :1].float().sum()) * 0.0  # keeps both inputs in the graph
        return probs + touch, out["modality_weights"]
