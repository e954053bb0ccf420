"""Losses, kept outside the exported graph: pure functions returning a value; the total returns a
dict of named parts.

Shapes: logits [B, C], target [B] int64, embeddings [B, D], gate [B, 1] or [B, 2].
Every loss reduces to a scalar (mean over the batch unless said otherwise).

``compute_losses`` reads the keys present in the model's output dict (see its docstring) and
combines the parts with ``LossWeights`` (static) times an optional ``dynamic`` multiplier per
part (from ``avemo.training.losses.weighting.LossWeighter``). ``total_loss`` is the historical entry point
used by the trainer (fused CE + ``aux_weight`` x unimodal CE) and gives the same results as before.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields

import torch
from torch import nn
from torch.nn import functional as F

MODALITIES = ("audio", "video")


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


# ---------------------------------------------------------------- contrastive
class ProjectionHead(nn.Module):
    """Linear-ReLU-Linear projection [B, in_dim] -> [B, out_dim] for the contrastive loss."""

    def __init__(self, in_dim: int, out_dim: int = 64, hidden: int | None = None):
        super().__init__()
        hidden = hidden or in_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


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


# ---------------------------------------------------------------- reconstruction and gate
def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, smooth_l1: bool = False) -> torch.Tensor:
    """Element mean of (pred - target)^2 (MSE) or SmoothL1 (beta 1: 0.5 d^2 if |d| < 1 else |d| - 0.5)."""
    target = target.detach()
    return F.smooth_l1_loss(pred, target) if smooth_l1 else F.mse_loss(pred, target)


def gate_regularisation(gate: torch.Tensor, mode: str = "deviation") -> torch.Tensor:
    """Penalty pushing the audio share g away from collapse onto one modality.

    gate [B, 1] (g) or [B, 2] (modality_weights: column 0 is the audio share g).
    "deviation" (default): mean_i (g_i - 0.5)^2, in [0, 0.25], zero at g = 0.5.
    "entropy": mean_i (log 2 - H(g_i)), H(g) = -g log g - (1 - g) log(1 - g); zero at g = 0.5.
    """
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


# ---------------------------------------------------------------- weights and CLI
@dataclass
class LossWeights:
    """Static loss weights and classification options (CLI flag in brackets)."""

    ce: float = 1.0  # fused cross-entropy / focal
    aux: float = 0.3  # each unimodal auxiliary head [--aux_weight]
    contrastive: float = 0.1  # InfoNCE [--contrastive_weight, --cl_loss_weight, --delta_nce]
    reconstruction: float = 0.03  # encoder reconstruction [--encoder_loss_weight]
    gate_reg: float = 0.01  # gate regulariser [--gate_reg_weight]
    kl: float = 0.0  # VAE KL [--kl_weight]
    distill: float = 0.0  # teacher -> unimodal heads distillation [--delta_va]
    focal_gamma: float = 0.0  # [--focal_gamma]; 0 = plain cross-entropy
    focal_alpha: tuple[float, ...] | None = None  # per-class focal alpha [--focal_alpha 1,2,...]
    label_smoothing: float = 0.0  # [--label_smoothing]
    use_class_weight: bool = True  # [--class_weight/--no-class_weight]
    use_smooth_l1: bool = False  # SmoothL1 instead of MSE for reconstruction [--use_smooth_l1]
    contrastive_temperature: float = 0.07  # [--contrastive_temperature]
    recon_modality_weights: tuple[float, float] = (1.0, 1.0)  # (audio, video) reconstruction weights
    gate_reg_mode: str = "deviation"  # see gate_regularisation
    distill_temperature: float = 2.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LossWeights:
        """Build from a namespace made by ``add_loss_arguments`` (missing attributes keep the defaults)."""
        d = cls()
        get = lambda name, default: default if getattr(args, name, None) is None else getattr(args, name)  # noqa: E731
        alpha = get("focal_alpha", d.focal_alpha)
        if isinstance(alpha, str):
            alpha = tuple(float(x) for x in alpha.split(",") if x.strip())
        contrastive = get("contrastive_weight", d.contrastive)
        contrastive = get("delta_nce", contrastive)  # InfoNCE weight in the distillation setting wins
        return cls(
            ce=d.ce,
            aux=get("aux_weight", d.aux),
            contrastive=contrastive,
            reconstruction=get("encoder_loss_weight", d.reconstruction),
            gate_reg=get("gate_reg_weight", d.gate_reg),
            kl=get("kl_weight", d.kl),
            distill=get("delta_va", d.distill),
            focal_gamma=get("focal_gamma", d.focal_gamma),
            focal_alpha=alpha,
            label_smoothing=get("label_smoothing", d.label_smoothing),
            use_class_weight=bool(get("class_weight", d.use_class_weight)),
            use_smooth_l1=bool(get("use_smooth_l1", d.use_smooth_l1)),
            contrastive_temperature=get("contrastive_temperature", d.contrastive_temperature),
            recon_modality_weights=d.recon_modality_weights,
            gate_reg_mode=d.gate_reg_mode,
            distill_temperature=d.distill_temperature,
        )

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def add_loss_arguments(parser: argparse.ArgumentParser, weighting: bool = True) -> None:
    """Add the loss flags (``--name`` and ``--dashed-name``) to ``parser``; also ``--loss_weighting``
    and friends when ``weighting``. Flags the parser already has (e.g. ``--class_weight``,
    ``--aux_weight`` in ``avemo train``) are skipped; ``LossWeights.from_args`` reads them anyway."""
    d = LossWeights()

    def opt(names: list[str], dest: str, **kw) -> None:
        flags = [f for n in names for f in dict.fromkeys([f"--{n}", f"--{n.replace('_', '-')}"])]
        if any(f in parser._option_string_actions for f in flags):
            return
        parser.add_argument(*flags, dest=dest, **kw)

    opt(
        ["focal_gamma"],
        "focal_gamma",
        type=float,
        default=d.focal_gamma,
        help="focal loss gamma, 0 = cross-entropy (default: %(default)s)",
    )
    opt(["focal_alpha"], "focal_alpha", default=None, help="per-class focal alpha, comma-separated (default: none)")
    opt(
        ["label_smoothing"],
        "label_smoothing",
        type=float,
        default=d.label_smoothing,
        help="label smoothing eps (default: %(default)s)",
    )
    opt(
        ["class_weight"],
        "class_weight",
        action=argparse.BooleanOptionalAction,
        default=d.use_class_weight,
        help="inverse-frequency class weights (default: on)",
    )
    opt(
        ["aux_weight"],
        "aux_weight",
        type=float,
        default=d.aux,
        help="weight of each unimodal auxiliary head's loss (default: %(default)s)",
    )
    opt(
        ["contrastive_weight", "cl_loss_weight"],
        "contrastive_weight",
        type=float,
        default=d.contrastive,
        help="cross-modal InfoNCE weight (default: %(default)s)",
    )
    opt(
        ["contrastive_temperature"],
        "contrastive_temperature",
        type=float,
        default=d.contrastive_temperature,
        help="InfoNCE temperature (default: %(default)s)",
    )
    opt(
        ["delta_nce"],
        "delta_nce",
        type=float,
        default=None,
        help="InfoNCE weight in the distillation setting; overrides --contrastive_weight when given (default: unset)",
    )
    opt(
        ["encoder_loss_weight"],
        "encoder_loss_weight",
        type=float,
        default=d.reconstruction,
        help="encoder reconstruction loss weight (default: %(default)s)",
    )
    opt(
        ["use_smooth_l1"],
        "use_smooth_l1",
        action="store_true",
        help="SmoothL1 instead of MSE for reconstruction (default: off)",
    )
    opt(
        ["gate_reg_weight"],
        "gate_reg_weight",
        type=float,
        default=d.gate_reg,
        help="gate regulariser weight (default: %(default)s)",
    )
    opt(["kl_weight"], "kl_weight", type=float, default=d.kl, help="VAE KL weight (default: %(default)s)")
    opt(
        ["delta_va"],
        "delta_va",
        type=float,
        default=d.distill,
        help="teacher -> unimodal head distillation weight (default: %(default)s)",
    )
    if weighting:
        from avemo.training.losses.weighting import add_weighting_arguments

        add_weighting_arguments(parser)


# ---------------------------------------------------------------- total
def loss_terms(
    outputs: dict[str, torch.Tensor],
    target: torch.Tensor,
    weights: LossWeights,
    class_weight: torch.Tensor | None = None,
    teacher_logits: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, tuple[torch.Tensor, float]], dict[str, float]]:
    """Raw loss tensors with their static weights: ({name: (value, weight)}, {extra log-only floats}).

    Terms whose static weight is 0 or whose inputs are missing are left out. Output keys read:
      "logits" [B, C] (required) -> "ce"
      "audio_logits", "video_logits" [B, C] -> "aux_audio", "aux_video"
      "z_audio", "z_video" [B, D] (projected) -> "contrastive"
      "recon" + "recon_target" (any shape), and/or "recon_audio" + "recon_target_audio" (or "target_audio"),
        "recon_video" + "recon_target_video" (or "target_video") -> "recon" (= sum of the per-modality losses
        times recon_modality_weights; the single pair has weight 1; per-modality values are logged)
      "gate" [B, 1] or [B, 2] -> "gate_reg" (the served "modality_weights" are not used: constant for baselines)
      "mu_audio"/"logvar_audio", "mu_video"/"logvar_video" [B, D] -> "kl" (sum over modalities)
      teacher_logits {"audio": [B, C], "video": [B, C], "fused": [B, C]} distilled into "audio_logits",
        "video_logits", "logits" -> "distill" (sum over the pairs present)
    """
    w = weights
    terms: dict[str, tuple[torch.Tensor, float]] = {}
    extra: dict[str, float] = {}
    weight = class_weight if w.use_class_weight else None
    alpha = None if w.focal_alpha is None else torch.as_tensor(w.focal_alpha, dtype=torch.float32)
    cls = lambda lg: classification_loss(lg, target, weight, w.focal_gamma, alpha, w.label_smoothing)  # noqa: E731
    terms["ce"] = (cls(outputs["logits"]), w.ce)
    for m in MODALITIES:
        if f"{m}_logits" in outputs and w.aux != 0:
            terms[f"aux_{m}"] = (cls(outputs[f"{m}_logits"]), w.aux)
    if w.contrastive != 0 and "z_audio" in outputs and "z_video" in outputs:
        terms["contrastive"] = (
            info_nce(outputs["z_audio"], outputs["z_video"], w.contrastive_temperature),
            w.contrastive,
        )
    if w.reconstruction != 0:
        recon = []
        if "recon" in outputs and "recon_target" in outputs:
            recon.append(reconstruction_loss(outputs["recon"], outputs["recon_target"], w.use_smooth_l1))
        for m, mw in zip(MODALITIES, w.recon_modality_weights):
            tgt = outputs.get(f"recon_target_{m}", outputs.get(f"target_{m}"))
            if f"recon_{m}" in outputs and tgt is not None:
                r = reconstruction_loss(outputs[f"recon_{m}"], tgt, w.use_smooth_l1)
                extra[f"recon_{m}"] = float(r.detach())
                recon.append(mw * r)
        if recon:
            terms["recon"] = (sum(recon[1:], recon[0]), w.reconstruction)
    if w.gate_reg != 0 and "gate" in outputs:
        terms["gate_reg"] = (gate_regularisation(outputs["gate"], w.gate_reg_mode), w.gate_reg)
    if w.kl != 0:
        kls = []
        for m in MODALITIES:
            if f"mu_{m}" in outputs and f"logvar_{m}" in outputs:
                kls.append(kl_divergence(outputs[f"mu_{m}"], outputs[f"logvar_{m}"]))
                extra[f"kl_{m}"] = float(kls[-1].detach())
        if kls:
            terms["kl"] = (sum(kls[1:], kls[0]), w.kl)
    if w.distill != 0 and teacher_logits:
        ds = []
        for name, t in teacher_logits.items():
            key = "logits" if name == "fused" else f"{name}_logits"
            if key in outputs:
                ds.append(distillation(outputs[key], t, w.distill_temperature))
                extra[f"distill_{name}"] = float(ds[-1].detach())
        if ds:
            terms["distill"] = (sum(ds[1:], ds[0]), w.distill)
    return terms, extra


def combine(
    terms: dict[str, tuple[torch.Tensor, float]],
    dynamic: dict[str, float] | None = None,
    extra: dict[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """total = sum_k w_k * dynamic_k * L_k (in insertion order). parts: raw L_k, "w_<k>" (weight in force,
    w_k * dynamic_k), the extra log-only values and "total"."""
    dynamic = dynamic or {}
    total = None
    parts: dict[str, float] = {}
    for name, (value, w) in terms.items():
        wk = w * dynamic.get(name, 1.0)
        total = wk * value if total is None else total + wk * value
        parts[name] = float(value.detach())
        parts[f"w_{name}"] = float(wk)
    parts.update(extra or {})
    parts["total"] = float(total.detach())
    return total, parts


def compute_losses(
    outputs: dict[str, torch.Tensor],
    target: torch.Tensor,
    weights: LossWeights,
    class_weight: torch.Tensor | None = None,
    teacher_logits: dict[str, torch.Tensor] | None = None,
    dynamic: dict[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """All losses the outputs allow (keys: see ``loss_terms``) -> (total scalar, parts dict of floats).

    ``dynamic`` {part name: multiplier} comes from ``LossWeighter.weights``; missing names use 1.
    With only "logits" + aux logits and default weights this equals ``total_loss`` exactly.
    """
    terms, extra = loss_terms(outputs, target, weights, class_weight, teacher_logits)
    return combine(terms, dynamic, extra)


def total_loss(
    outputs: dict[str, torch.Tensor], target: torch.Tensor, weight: torch.Tensor | None = None, aux_weight: float = 0.3
) -> tuple[torch.Tensor, dict[str, float]]:
    """Fused cross-entropy plus ``aux_weight`` x the unimodal auxiliary heads' cross-entropy.

    Returns (total, parts) where parts maps "ce", "aux_audio", "aux_video", "total" to floats.
    """
    w = LossWeights(aux=aux_weight, contrastive=0.0, reconstruction=0.0, gate_reg=0.0)
    terms, _ = loss_terms(outputs, target, w, weight)
    total, parts = combine(terms)
    return total, {k: v for k, v in parts.items() if not k.startswith("w_")}
