"""Losses, kept outside the exported graph: pure functions returning the total and named parts."""
from __future__ import annotations

import torch
from torch.nn import functional as F


def class_weights(labels: list[int] | torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1; classes absent from ``labels`` get weight 1."""
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=num_classes).float()
    w = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.ones_like(counts))
    return w / w.mean()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """logits [B, C], target [B] int64 -> scalar (weighted mean over the batch)."""
    return F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing)


def total_loss(outputs: dict[str, torch.Tensor], target: torch.Tensor, weight: torch.Tensor | None = None,
               aux_weight: float = 0.3) -> tuple[torch.Tensor, dict[str, float]]:
    """Fused cross-entropy plus ``aux_weight`` x the unimodal auxiliary heads' cross-entropy.

    Returns (total, parts) where parts maps "ce", "aux_audio", "aux_video", "total" to floats.
    """
    ce = cross_entropy(outputs["logits"], target, weight)
    total, parts = ce, {"ce": float(ce.detach())}
    for name in ("audio", "video"):
        key = f"{name}_logits"
        if key in outputs and aux_weight > 0:
            aux = cross_entropy(outputs[key], target, weight)
            total = total + aux_weight * aux
            parts[f"aux_{name}"] = float(aux.detach())
    parts["total"] = float(total.detach())
    return total, parts
