"""Fusion heads. Each maps (audio embedding, video embedding, modality mask) to class logits and
the served ``modality_weights`` [B, 2] = (audio share, video share) of the prediction.

Call convention: ``fusion(h_a, h_v, mask, ctx)`` with h_a, h_v [B, D] (already multiplied by their
mask column by ``FusionModel``; ``None`` for the missing encoder of a unimodal baseline), mask [B, 2]
and ``ctx`` a dict of extra inputs some fusions need: "seq_audio" [B, Ta, D] and "seq_video"
[B, F, D] (masked encoder tokens, fusions in ``SEQUENCE_FUSIONS``), "logvar_audio" / "logvar_video"
[B, D] (variational encoders, fusions in ``VARIATIONAL_FUSIONS``). It returns (logits, weights) or
(logits, weights, extra outputs dict) merged into the model's outputs (e.g. reconstructions, gate).

Every fusion honours the mask: a missing modality gets weight 0 and its content cannot change the
output. When a modality is missing the weights are renormalised over the present one (sum 1).

Builders are registered in ``FUSION_BUILDERS`` (a small dict instead of a framework).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

SEQUENCE_FUSIONS = frozenset({"xattn"})  # need encoder token sequences in ctx
VARIATIONAL_FUSIONS = frozenset({"uncertainty", "gated_uncertainty"})  # need variational encoders (logvar)


def classifier(dim_in: int, dim_hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim_in, dim_hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(dim_hidden, num_classes)
    )


def masked_normalise(w: torch.Tensor, mask: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Non-negative scores [B, 2] -> weights [B, 2]: zero where the mask is 0, rows sum to 1."""
    w = w * mask
    return w / w.sum(dim=1, keepdim=True).clamp_min(eps)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the present modalities only; exactly 0 for a missing one, never inf/NaN
    (also in the backward pass), whatever the missing modality's score."""
    present = mask > 0
    top = torch.where(present, scores, torch.full_like(scores, -1e9)).amax(dim=1, keepdim=True)
    e = torch.exp(torch.where(present, scores, top) - top) * mask
    return e / e.sum(dim=1, keepdim=True).clamp_min(1e-12)


def safe_norm(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """L2 norm over the last dim with a finite gradient at 0: [B, D] -> [B]."""
    return torch.sqrt(x.pow(2).sum(dim=-1) + eps)


def forced_gate(g: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio share g [B, 1] -> (g with the mask forced: both present g, audio only 1, video only 0,
    weights [B, 2] = (g, 1 - g) with a missing modality at exactly 0)."""
    m_a, m_v = mask[:, 0:1], mask[:, 1:2]
    g = g * m_a * m_v + m_a * (1.0 - m_v)
    return g, torch.cat([g, (1.0 - g) * m_v], dim=1)


def uncertainty_weights(
    logvar_a: torch.Tensor, logvar_v: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """w = softmax((1 / sigma) / T) over the present modalities, sigma_m = mean_d exp(logvar_m / 2).

    A confident (low-variance) modality gets the larger weight; with logvar = 0 (the init) both are 0.5.
    """
    sigma = torch.stack([torch.exp(0.5 * logvar_a).mean(dim=-1), torch.exp(0.5 * logvar_v).mean(dim=-1)], dim=1)
    return masked_softmax((1.0 / sigma) / temperature, mask)


def init_gate(gate: nn.Linear, audio_share: float) -> None:
    nn.init.normal_(gate.weight, std=0.01)
    nn.init.constant_(gate.bias, math.log(audio_share / (1.0 - audio_share)))


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
        init_gate(self.gate, gate_init_audio)
        self.head = classifier(2 * dim, dim, num_classes, dropout)

    def forward(
        self, h_a: torch.Tensor, h_v: torch.Tensor, mask: torch.Tensor, ctx: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        g, weights = forced_gate(torch.sigmoid(self.gate(torch.cat([h_a, h_v], dim=1))), mask)  # [B, 1], [B, 2]
        logits = self.head(torch.cat([g * h_a, (1.0 - g) * h_v], dim=1))  # [B, C]
        return logits, weights


class UnimodalHead(nn.Module):
    """Baseline using one modality; ``modality_weights`` is the constant one-hot of that modality."""

    def __init__(self, dim: int, num_classes: int, dropout: float, modality: str):
        super().__init__()
        self.index = 0 if modality == "audio" else 1
        self.head = classifier(dim, dim, num_classes, dropout)

    def forward(
        self, h_a: torch.Tensor | None, h_v: torch.Tensor | None, mask: torch.Tensor, ctx: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = h_a if self.index == 0 else h_v
        present = mask[:, self.index : self.index + 1]  # [B, 1]
        logits = self.head(h * present)
        weights = torch.zeros_like(mask)
        weights[:, self.index : self.index + 1] = present
        return logits, weights


class LateFusion(nn.Module):
    """Decision-level fusion: the average of two unimodal classifiers' probabilities.

    p = w_a softmax(f_a(h_a)) + w_v softmax(f_v(h_v)); logits = log p, so softmax(logits) = p.
    ``modality_weights`` = (w_a, w_v) = (0.5, 0.5) masked and renormalised: the weight of each
    modality's probability vector in the average ((1, 0) / (0, 1) when one is missing).
    """

    def __init__(self, dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.audio_head = classifier(dim, dim, num_classes, dropout)
        self.video_head = classifier(dim, dim, num_classes, dropout)

    def forward(self, h_a, h_v, mask, ctx=None):
        w = masked_normalise(torch.ones_like(mask), mask)  # [B, 2]
        p = w[:, 0:1] * torch.softmax(self.audio_head(h_a), dim=-1) + w[:, 1:2] * torch.softmax(
            self.video_head(h_v), dim=-1
        )
        return torch.log(p.clamp_min(1e-12)), w


class ConcatFusion(nn.Module):
    """Feature-level fusion: MLP on [h_a ; h_v].

    The first layer splits as W [h_a ; h_v] = W_a h_a + W_v h_v. ``modality_weights`` =
    (||W_a h_a||, ||W_v h_v||) / sum: each modality's share (relative L2 norm) of its additive
    contribution to the first layer's pre-activation (no gradients needed; a missing modality
    contributes W_v 0 = 0, so its weight is exactly 0).
    """

    def __init__(self, dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.dim = dim
        self.head = classifier(2 * dim, dim, num_classes, dropout)

    def forward(self, h_a, h_v, mask, ctx=None):
        first = self.head[0]
        c_a = F.linear(h_a, first.weight[:, : self.dim])
        c_v = F.linear(h_v, first.weight[:, self.dim :])
        x = c_a + c_v + first.bias
        for layer in list(self.head)[1:]:
            x = layer(x)
        weights = masked_normalise(torch.stack([safe_norm(c_a), safe_norm(c_v)], dim=1), mask)
        return x, weights


class CrossAttentionFusion(nn.Module):
    """Bidirectional cross-modal attention on encoder tokens (a [B, Ta, D], v [B, F, D]).

    a' = LN_a(a + m_v * MHA(q=a, k=v, v=v)), v' = LN_v(v + m_a * MHA(q=v, k=a, v=a)) (audio steps
    attend to frames, frames attend to audio steps; the cross term is dropped when the other
    modality is missing); summaries s_a = m_a mean_t a', s_v = m_v mean_t v'; head on [s_a ; s_v].
    No positional encodings: the tokens come from convolutional features (local order only).
    ``modality_weights`` = (||s_a||, ||s_v||) / sum: each modality's share of the L2 norm of the
    two attended summaries fed to the head.
    """

    def __init__(self, dim: int, num_classes: int, dropout: float, heads: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"xattn: embed_dim {dim} must be divisible by xattn_heads {heads}")
        self.audio_to_video = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.video_to_audio = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_a = nn.LayerNorm(dim)
        self.norm_v = nn.LayerNorm(dim)
        self.head = classifier(2 * dim, dim, num_classes, dropout)

    def forward(self, h_a, h_v, mask, ctx):
        a, v = ctx["seq_audio"], ctx["seq_video"]  # masked tokens
        m_a, m_v = mask[:, 0:1], mask[:, 1:2]
        a_att, _ = self.audio_to_video(a, v, v, need_weights=False)  # [B, Ta, D]
        v_att, _ = self.video_to_audio(v, a, a, need_weights=False)  # [B, F, D]
        s_a = self.norm_a(a + m_v[:, :, None] * a_att).mean(dim=1) * m_a  # [B, D]
        s_v = self.norm_v(v + m_a[:, :, None] * v_att).mean(dim=1) * m_v
        logits = self.head(torch.cat([s_a, s_v], dim=1))
        weights = masked_normalise(torch.stack([safe_norm(s_a), safe_norm(s_v)], dim=1), mask)
        return logits, weights


class UncertaintyFusion(nn.Module):
    """Uncertainty-weighted fusion of variational embeddings.

    w = softmax((1 / sigma) / T) over the present modalities (``uncertainty_weights``), head on
    [w_a h_a ; w_v h_v]. ``modality_weights`` = w: the confidence-based share of each modality.
    """

    def __init__(self, dim: int, num_classes: int, dropout: float, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"uncertainty_temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.head = classifier(2 * dim, dim, num_classes, dropout)

    def forward(self, h_a, h_v, mask, ctx):
        w = uncertainty_weights(ctx["logvar_audio"], ctx["logvar_video"], mask, self.temperature)
        return self.head(torch.cat([w[:, 0:1] * h_a, w[:, 1:2] * h_v], dim=1)), w


class GatedUncertaintyFusion(nn.Module):
    """Mix of the uncertainty weights and a learned sigmoid gate: w = alpha w_unc + (1 - alpha) w_gate.

    w_gate = (g, 1 - g), g = sigmoid(W [h_a; h_v] + b) initialised to ~``gate_init_audio``, forced
    by the mask like ``GatedFusion``; head on [w_a h_a ; w_v h_v]. ``modality_weights`` = w (the
    mixed share of each modality). Extra output "gate" = g [B, 1] (for the gate regulariser).
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        dropout: float,
        temperature: float = 1.0,
        alpha: float = 0.5,
        gate_init_audio: float = 0.3,
    ):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"gate_alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"uncertainty_temperature must be > 0, got {temperature}")
        self.temperature, self.alpha = float(temperature), float(alpha)
        self.gate = nn.Linear(2 * dim, 1)
        init_gate(self.gate, gate_init_audio)
        self.head = classifier(2 * dim, dim, num_classes, dropout)

    def forward(self, h_a, h_v, mask, ctx):
        g, w_gate = forced_gate(torch.sigmoid(self.gate(torch.cat([h_a, h_v], dim=1))), mask)
        w_unc = uncertainty_weights(ctx["logvar_audio"], ctx["logvar_video"], mask, self.temperature)
        w = self.alpha * w_unc + (1.0 - self.alpha) * w_gate
        logits = self.head(torch.cat([w[:, 0:1] * h_a, w[:, 1:2] * h_v], dim=1))
        return logits, w, {"gate": g}


class HierarchicalFusion(nn.Module):
    """Hierarchical auto-fusion with reconstruction.

    Level 1 (per modality): c_m = GELU(E_m h_m) [B, k], reconstructed as D_m c_m ~ h_m.
    Gate: g = sigmoid(W [c_a; c_v] + b) (init ~``gate_init_audio``, forced by the mask).
    Level 2 (global): z = GELU(E [g c_a ; (1 - g) c_v]) [B, k] compresses the concatenation and is
    reconstructed as D z ~ [h_a ; h_v]; the classifier reads z.
    Extra outputs for the losses: "recon" / "recon_target" [B, 2D] (global), "recon_audio" /
    "target_audio", "recon_video" / "target_video" [B, D], "gate" [B, 1]. Reconstructions are
    multiplied by the mask, so a missing modality (target 0) adds no reconstruction error.
    ``modality_weights`` = (g, 1 - g): each modality's share of the gated input to the bottleneck.
    """

    def __init__(self, dim: int, num_classes: int, dropout: float, bottleneck: int = 0, gate_init_audio: float = 0.3):
        super().__init__()
        k = bottleneck or max(dim // 2, 1)
        self.enc_audio = nn.Sequential(nn.Linear(dim, k), nn.GELU())
        self.enc_video = nn.Sequential(nn.Linear(dim, k), nn.GELU())
        self.dec_audio = nn.Linear(k, dim)
        self.dec_video = nn.Linear(k, dim)
        self.gate = nn.Linear(2 * k, 1)
        init_gate(self.gate, gate_init_audio)
        self.enc_global = nn.Sequential(nn.Linear(2 * k, k), nn.GELU())
        self.dec_global = nn.Linear(k, 2 * dim)
        self.head = classifier(k, dim, num_classes, dropout)

    def forward(self, h_a, h_v, mask, ctx=None):
        m_a, m_v = mask[:, 0:1], mask[:, 1:2]
        c_a, c_v = self.enc_audio(h_a), self.enc_video(h_v)
        g, weights = forced_gate(torch.sigmoid(self.gate(torch.cat([c_a, c_v], dim=1))), mask)
        z = self.enc_global(torch.cat([g * c_a, (1.0 - g) * c_v], dim=1))
        logits = self.head(z)
        dim = h_a.shape[1]
        both = torch.cat([m_a.expand(-1, dim), m_v.expand(-1, dim)], dim=1)
        extra = {
            "recon": self.dec_global(z) * both,
            "recon_target": torch.cat([h_a, h_v], dim=1),
            "recon_audio": self.dec_audio(c_a) * m_a,
            "target_audio": h_a,
            "recon_video": self.dec_video(c_v) * m_v,
            "target_video": h_v,
            "gate": g,
        }
        return logits, weights, extra


FUSION_BUILDERS = {
    "gated": lambda cfg: GatedFusion(cfg.embed_dim, cfg.num_classes, cfg.dropout, cfg.gate_init_audio),
    "audio": lambda cfg: UnimodalHead(cfg.embed_dim, cfg.num_classes, cfg.dropout, "audio"),
    "video": lambda cfg: UnimodalHead(cfg.embed_dim, cfg.num_classes, cfg.dropout, "video"),
    "late": lambda cfg: LateFusion(cfg.embed_dim, cfg.num_classes, cfg.dropout),
    "concat": lambda cfg: ConcatFusion(cfg.embed_dim, cfg.num_classes, cfg.dropout),
    "xattn": lambda cfg: CrossAttentionFusion(cfg.embed_dim, cfg.num_classes, cfg.dropout, cfg.xattn_heads),
    "uncertainty": lambda cfg: UncertaintyFusion(
        cfg.embed_dim, cfg.num_classes, cfg.dropout, cfg.uncertainty_temperature
    ),
    "gated_uncertainty": lambda cfg: GatedUncertaintyFusion(
        cfg.embed_dim, cfg.num_classes, cfg.dropout, cfg.uncertainty_temperature, cfg.gate_alpha, cfg.gate_init_audio
    ),
    "hierarchical": lambda cfg: HierarchicalFusion(
        cfg.embed_dim, cfg.num_classes, cfg.dropout, cfg.bottleneck_dim, cfg.gate_init_audio
    ),
}
