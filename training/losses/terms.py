"""Loss functions, kept outside the exported graph: pure functions of tensors returning a scalar.

Shapes: logits [B, C], target [B] int64 (classification) or predictions [B, 1], target [B] float (regression),
embeddings [B, D], gate [B, 1] or shares [B, M].
Every loss reduces to a scalar (mean over the batch unless said otherwise).

The trainer does not call these directly: ``avemo.training.losses.total.loss_terms`` picks the terms
the model's outputs allow, with their ``LossWeights``, and ``combine`` sums them (times the optional
``avemo.training.losses.weighting.LossWeighter`` multipliers). ``total_loss`` is the original objective
(fused CE + ``aux_weight`` x unimodal CE) written out on its own, a reference for tests.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

MODALITIES = ("audio", "video")  # the clip model's modalities (``total_loss``'s default)
REGRESSION_LOSSES = ("mse", "l1")


# ---------------------------------------------------------------- classification
def class_weights(labels: list[int] | torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1; classes absent from ``labels`` get weight 1."""
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=num_classes).float()
    w = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.ones_like(counts))
    return w / w.mean()


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, label_smoothing: float = 0.0
) -> torch.Tensor:
    """logits [B, C], target [B] int64 -> scalar.

    CE_i = -log p_{i,y_i}; with class weights w: sum_i w_{y_i} CE_i / sum_i w_{y_i}, else the mean.
    With label smoothing eps (torch semantics): (1 - eps) CE_i + eps * mean_c(-log p_{i,c}).
    """
    return F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing)


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) with optional label smoothing. logits [B, C], target [B] -> scalar.

    q = (1 - eps) onehot(y) + eps / C (smoothed target), p = softmax(logits),
    l_i = -sum_c alpha_c q_{i,c} (1 - p_{i,c})^gamma log p_{i,c}   (alpha [C], default all 1).
    eps = 0: l_i = -alpha_y (1 - p_y)^gamma log p_y. gamma = 0, alpha = None: equals ``cross_entropy``.
    Reduction: sum_i w_{y_i} l_i / sum_i w_{y_i} with class weights ``weight`` [C], else the mean.
    """
    c = logits.shape[-1]
    logp = F.log_softmax(logits, dim=-1)  # [B, C]
    q = F.one_hot(target, c).to(logp.dtype) * (1.0 - label_smoothing) + label_smoothing / c
    mod = (1.0 - logp.exp()).clamp(min=0.0).pow(gamma) if gamma != 0 else torch.ones_like(logp)
    per_class = -q * mod * logp
    if alpha is not None:
        per_class = per_class * alpha.to(logp)
    per_sample = per_class.sum(-1)  # [B]
    if weight is None:
        return per_sample.mean()
    w = weight.to(logp)[target]
    return (w * per_sample).sum() / w.sum()


def classification_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    gamma: float = 0.0,
    alpha: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Dispatch: plain (label-smoothed) cross-entropy when gamma == 0 and alpha is None, else focal."""
    if gamma == 0 and alpha is None:
        return cross_entropy(logits, target, weight, label_smoothing)
    return focal_loss(logits, target, gamma, alpha, label_smoothing, weight)


# ---------------------------------------------------------------- regression
def regression_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """pred [B, 1] (or [B]), target [B] float -> scalar: mean (pred - y)^2 ("mse", seed 002's main loss)
    or mean |pred - y| ("l1", MMSA's regression loss)."""
    pred = pred.reshape(-1)
    target = target.to(pred.dtype).reshape(-1)
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "l1":
        return F.l1_loss(pred, target)
    raise ValueError(f"regression loss must be one of {REGRESSION_LOSSES}, got {kind!r}")


def gaussian_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Distillation of a regression output: KL(N(t, 1) || N(s, 1)) = mean_i (s_i - t_i)^2 / 2.

    The KL divergence between two unit-variance Gaussians centred on the teacher's and the student's
    predictions [B, 1]; the teacher is detached. Zero when student == teacher."""
    return 0.5 * (student.reshape(-1) - teacher.detach().reshape(-1).to(student.dtype)).pow(2).mean()


# ---------------------------------------------------------------- contrastive
def info_nce(z_a: torch.Tensor, z_v: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Symmetric cross-modal InfoNCE. z_a, z_v [B, D] (L2-normalised here) -> scalar.

    S = norm(z_a) norm(z_v)^T / T  [B, B]; positives on the diagonal;
    loss = 0.5 * (CE(S, arange B) + CE(S^T, arange B))  (audio->video and video->audio).
    Equals log B when all embeddings are identical.
    """
    a, v = F.normalize(z_a, dim=-1), F.normalize(z_v, dim=-1)
    s = a @ v.t() / temperature
    idx = torch.arange(s.shape[0], device=s.device)
    return 0.5 * (F.cross_entropy(s, idx) + F.cross_entropy(s.t(), idx))


CONTRASTIVE_PAIRS = ("all", "text")


def contrastive_loss(z: dict[str, torch.Tensor], pairs: str = "all", temperature: float = 0.07) -> torch.Tensor:
    """InfoNCE over modality pairs of the projected embeddings z {modality: [B, P]}, in their order.

    "all": the mean over every pair (AttentionRobustV4: (L_at + L_av + L_tv) / 3; one pair for two modalities);
    "text": the sum over every other modality against text (seed 002: InfoNCE(video, text) + InfoNCE(audio,
    text)); needs "text" in z.
    """
    names = list(z)
    if pairs == "all":
        losses = [info_nce(z[a], z[b], temperature) for i, a in enumerate(names) for b in names[i + 1 :]]
        return sum(losses[1:], losses[0]) / len(losses)
    if pairs == "text":
        if "text" not in z or len(names) < 2:
            raise ValueError(f"contrastive pairs 'text' need text and another modality, got {names}")
        losses = [info_nce(z[m], z["text"], temperature) for m in names if m != "text"]
        return sum(losses[1:], losses[0])
    raise ValueError(f"contrastive pairs must be one of {CONTRASTIVE_PAIRS}, got {pairs!r}")


# ---------------------------------------------------------------- reconstruction and gate
def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, smooth_l1: bool = False) -> torch.Tensor:
    """Element mean of (pred - target)^2 (MSE) or SmoothL1 (beta 1: 0.5 d^2 if |d| < 1 else |d| - 0.5)."""
    target = target.detach()
    return F.smooth_l1_loss(pred, target) if smooth_l1 else F.mse_loss(pred, target)


def gate_regularisation(gate: torch.Tensor, mode: str = "deviation") -> torch.Tensor:
    """Penalty pushing the gate away from collapse onto one modality.

    gate [B, 1] (g, the first modality's share of two) or shares [B, M] (rows sum to 1; M = 2: column 0 is g).
    Two modalities: "deviation" (default): mean_i (g_i - 0.5)^2, in [0, 0.25], zero at g = 0.5.
    "entropy": mean_i (log 2 - H(g_i)), H(g) = -g log g - (1 - g) log(1 - g); zero at g = 0.5.
    M > 2 shares w: "deviation": mean_i sum_m (w_im - 1/M)^2 / 2 (the same value as above for M = 2);
    "entropy": mean_i (log M - H(w_i)). Both zero at the uniform split.
    """
    if gate.dim() == 2 and gate.shape[1] > 2:
        m = gate.shape[1]
        if mode == "deviation":
            return (0.5 * (gate - 1.0 / m).pow(2).sum(dim=1)).mean()
        if mode == "entropy":
            w = gate.clamp(1e-6, 1.0)
            return (math.log(m) + (w * w.log()).sum(dim=1)).mean()
        raise ValueError(f"gate regularisation mode must be deviation or entropy, got {mode!r}")
    g = gate[:, 0] if gate.dim() == 2 else gate
    if mode == "deviation":
        return ((g - 0.5) ** 2).mean()
    if mode == "entropy":
        g = g.clamp(1e-6, 1 - 1e-6)
        return (math.log(2.0) + g * g.log() + (1 - g) * (1 - g).log()).mean()
    raise ValueError(f"gate regularisation mode must be deviation or entropy, got {mode!r}")


# ---------------------------------------------------------------- KL
def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """VAE KL(N(mu, exp(logvar)) || N(0, I)). mu, logvar [B, D] -> scalar.

    mean_i of -0.5 * sum_d (1 + logvar - mu^2 - exp(logvar)).
    """
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    return kl.flatten(1).sum(1).mean()


def distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Knowledge distillation: T^2 * KL(softmax(t/T) || softmax(s/T)), batchmean. [B, C] each -> scalar.

    The teacher is detached. Zero when student == teacher.
    """
    t = temperature
    log_s = F.log_softmax(student_logits / t, dim=-1)
    log_t = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    return t * t * F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)


# ---------------------------------------------------------------- reference objective
def total_loss(
    outputs: dict[str, torch.Tensor], target: torch.Tensor, weight: torch.Tensor | None = None, aux_weight: float = 0.3
) -> tuple[torch.Tensor, dict[str, float]]:
    """Fused cross-entropy plus ``aux_weight`` x the unimodal auxiliary heads' cross-entropy.

    Returns (total, parts) where parts maps "ce", "aux_audio", "aux_video" (heads present) and "total"
    to floats. ``loss_terms`` + ``combine`` with default ``LossWeights`` give the same value, bit for bit,
    for outputs without the optional keys (projections, reconstructions, gate, mu/logvar).
    """
    total = cross_entropy(outputs["logits"], target, weight)
    parts = {"ce": float(total.detach())}
    for m in MODALITIES:
        if f"{m}_logits" in outputs and aux_weight != 0:
            aux = cross_entropy(outputs[f"{m}_logits"], target, weight)
            total = total + aux_weight * aux
            parts[f"aux_{m}"] = float(aux.detach())
    parts["total"] = float(total.detach())
    return total, parts
