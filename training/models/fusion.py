"""Fusion heads over M modalities. Each maps the modality embeddings and the modality mask to outputs
(class logits, or one regression value) and the ``modality_weights`` [B, M]: each modality's share of the
prediction. The clip model is the M = 2 case (audio, video); a feature model has M = 3 (text, audio, video).

Call convention: ``fusion(hs, mask, ctx)`` with ``hs`` a list of M embeddings [B, D] in the model's modality
order (already multiplied by their mask column by ``FusionModel``; ``None`` for a modality a unimodal
baseline has no encoder for), mask [B, M] and ``ctx`` a dict of extra inputs some fusions need:
"seq_<m>" [B, T_m, D] (masked encoder tokens, fusions in ``SEQUENCE_FUSIONS``), "pad_<m>" [B, T_m] bool
(True = padding, feature sequences only), "logvar_<m>" [B, D] (variational encoders, fusions in
``VARIATIONAL_FUSIONS``). It returns (logits, weights) or (logits, weights, extra outputs dict) merged into
the model's outputs (e.g. reconstructions, gate).

Every fusion honours the mask: a missing modality gets weight 0 and its content cannot change the
output. When a modality is missing the weights are renormalised over the present ones (sum 1).

Gates: M - 1 free scores against a last score fixed at 0, softmaxed over the present modalities
(``gate_shares``). For M = 2 that softmax is the sigmoid gate g = sigmoid(s), computed as such.

Builders are registered in ``FUSION_BUILDERS`` (a small dict instead of a framework); each takes the
``ModelConfig`` (``cfg.modalities``, ``cfg.embed_dim``, ``cfg.num_outputs``, ...).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

SEQUENCE_FUSIONS = frozenset({"xattn"})  # need encoder token sequences in ctx
VARIATIONAL_FUSIONS = frozenset({"uncertainty", "gated_uncertainty"})  # need variational encoders (logvar)


def modality_dropout(mask: torch.Tensor, p: float) -> torch.Tensor:
    """Drop each present modality with probability p, never all of them: mask [B, M] -> [B, M]."""
    m = mask.shape[1]
    keep = (torch.rand_like(mask) >= p).float()
    all_dropped = (keep.sum(dim=1, keepdim=True) == 0).float()
    pick = nn.functional.one_hot(torch.randint(0, m, (mask.shape[0],), device=mask.device), m).float()
    keep = keep + all_dropped * pick
    dropped = mask * keep
    # a window that had only one modality keeps it
    return torch.where(dropped.sum(dim=1, keepdim=True) > 0, dropped, mask)


def classifier(dim_in: int, dim_hidden: int, num_outputs: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim_in, dim_hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(dim_hidden, num_outputs)
    )


def masked_normalise(w: torch.Tensor, mask: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Non-negative scores [B, M] -> weights [B, M]: zero where the mask is 0, rows sum to 1."""
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
    """Two modalities: first-modality share g [B, 1] -> (g with the mask forced: both present g, first only 1,
    second only 0; weights [B, 2] = (g, 1 - g) with a missing modality at exactly 0)."""
    m_a, m_v = mask[:, 0:1], mask[:, 1:2]
    g = g * m_a * m_v + m_a * (1.0 - m_v)
    return g, torch.cat([g, (1.0 - g) * m_v], dim=1)


def gate_shares(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Gate scores [B, M - 1] -> shares [B, M]: softmax over the present modalities of [scores, 0].

    M = 2: the sigmoid gate ``forced_gate(sigmoid(s))`` (the same function, computed the usual way)."""
    if scores.shape[1] == 1:
        return forced_gate(torch.sigmoid(scores), mask)[1]
    return masked_softmax(torch.cat([scores, scores.new_zeros(scores.shape[0], 1)], dim=1), mask)


def init_gate(gate: nn.Linear, first_share: float) -> None:
    """Near-zero weights; biases so that the first modality starts with ``first_share`` and the others
    share the rest equally (M = 2: bias = logit(first_share); first_share = 1/M: all biases 0)."""
    m = gate.out_features + 1
    nn.init.normal_(gate.weight, std=0.01)
    nn.init.zeros_(gate.bias)
    with torch.no_grad():
        gate.bias[0] = math.log(first_share * (m - 1) / (1.0 - first_share))


def uncertainty_weights(logvars: list[torch.Tensor], mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """w = softmax((1 / sigma) / T) over the present modalities, sigma_m = mean_d exp(logvar_m / 2).

    logvars: M tensors [B, D] -> [B, M]. A confident (low-variance) modality gets the larger weight; with
    logvar = 0 (the init) all are equal.
    """
    sigma = torch.stack([torch.exp(0.5 * lv).mean(dim=-1) for lv in logvars], dim=1)  # [B, M]
    return masked_softmax((1.0 / sigma) / temperature, mask)


def weighted_concat(hs: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """[w_1 h_1 ; ... ; w_M h_M]: M embeddings [B, D], weights [B, M] -> [B, M D]."""
    return torch.cat([w[:, i : i + 1] * h for i, h in enumerate(hs)], dim=1)


def masked_mean(tokens: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
    """Mean over the time axis of tokens [B, T, D], over the valid steps only when ``pad`` [B, T] is given."""
    if pad is None:
        return tokens.mean(dim=1)
    valid = (~pad).to(tokens.dtype)[:, :, None]  # [B, T, 1]
    return (tokens * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1.0)


class GatedFusion(nn.Module):
    """Softmax gate over the M embeddings: w = gate_shares(W [h_1; ...; h_M] + b), initialised so that the
    first modality has ``gate_init`` (M = 2: the sigmoid gate g, video favoured at 0.3 audio).
    The head sees [w_1 h_1 ; ... ; w_M h_M]. ``modality_weights`` = w. The mask is honoured exactly: a missing
    modality has w = 0, and with one modality present its w is 1.
    """

    def __init__(self, modalities: tuple[str, ...], dim: int, num_outputs: int, dropout: float, gate_init: float):
        super().__init__()
        m = len(modalities)
        self.gate = nn.Linear(m * dim, m - 1)
        init_gate(self.gate, gate_init)
        self.head = classifier(m * dim, dim, num_outputs, dropout)

    def forward(self, hs, mask, ctx=None):
        w = gate_shares(self.gate(torch.cat(hs, dim=1)), mask)  # [B, M]
        return self.head(weighted_concat(hs, w)), w


class UnimodalHead(nn.Module):
    """Baseline using one modality; ``modality_weights`` is the constant one-hot of that modality."""

    def __init__(self, modalities: tuple[str, ...], dim: int, num_outputs: int, dropout: float, modality: str):
        super().__init__()
        self.index = modalities.index(modality)
        self.head = classifier(dim, dim, num_outputs, dropout)

    def forward(self, hs, mask, ctx=None):
        present = mask[:, self.index : self.index + 1]  # [B, 1]
        logits = self.head(hs[self.index] * present)
        weights = torch.zeros_like(mask)
        weights[:, self.index : self.index + 1] = present
        return logits, weights


class LateFusion(nn.Module):
    """Decision-level fusion: the average of M unimodal classifiers' probabilities.

    p = sum_m w_m softmax(f_m(h_m)); logits = log p, so softmax(logits) = p. Regression (one output): the
    average of the M predictions. ``modality_weights`` = w = uniform, masked and renormalised.
    """

    def __init__(self, modalities: tuple[str, ...], dim: int, num_outputs: int, dropout: float):
        super().__init__()
        self.regression = num_outputs == 1
        self.heads = nn.ModuleDict({m: classifier(dim, dim, num_outputs, dropout) for m in modalities})

    def forward(self, hs, mask, ctx=None):
        w = masked_normalise(torch.ones_like(mask), mask)  # [B, M]
        outs = [head(h) for head, h in zip(self.heads.values(), hs)]
        if self.regression:
            return sum(w[:, i : i + 1] * o for i, o in enumerate(outs)), w
        p = w[:, 0:1] * torch.softmax(outs[0], dim=-1)
        for i, o in enumerate(outs[1:], start=1):
            p = p + w[:, i : i + 1] * torch.softmax(o, dim=-1)
        return torch.log(p.clamp_min(1e-12)), w


class ConcatFusion(nn.Module):
    """Feature-level fusion: MLP on [h_1 ; ... ; h_M].

    The first layer splits as W [h_1 ; ... ; h_M] = sum_m W_m h_m. ``modality_weights`` =
    (||W_1 h_1||, ..., ||W_M h_M||) / sum: each modality's share (relative L2 norm) of its additive
    contribution to the first layer's pre-activation (a missing modality contributes W_m 0 = 0: weight 0).
    """

    def __init__(self, modalities: tuple[str, ...], dim: int, num_outputs: int, dropout: float):
        super().__init__()
        self.dim = dim
        self.head = classifier(len(modalities) * dim, dim, num_outputs, dropout)

    def forward(self, hs, mask, ctx=None):
        first: nn.Linear = self.head[0]  # type: ignore[assignment]  # classifier(): Linear first
        d = self.dim
        parts = [F.linear(h, first.weight[:, i * d : (i + 1) * d]) for i, h in enumerate(hs)]  # M x [B, D]
        x = parts[0]
        for p in parts[1:]:
            x = x + p
        x = x + first.bias
        for layer in list(self.head)[1:]:
            x = layer(x)
        return x, masked_normalise(torch.stack([safe_norm(p) for p in parts], dim=1), mask)


class CrossAttentionFusion(nn.Module):
    """Cross-modal attention on encoder tokens t_m [B, T_m, D], one attention per ordered pair.

    t_m' = LN_m(t_m + sum_{n != m} m_n * MHA_{m->n}(q=t_m, k=t_n, v=t_n)) (each modality's steps attend to
    every other modality's; a missing modality's term is dropped; padding keys are ignored); summaries
    s_m = m_m * mean_t t_m' (over valid steps); head on [s_1 ; ... ; s_M]. No positional encodings: the clip
    tokens come from convolutional features (local order only). ``modality_weights`` = (||s_1||, ...) / sum:
    each modality's share of the L2 norm of the attended summaries fed to the head.
    """

    def __init__(self, modalities: tuple[str, ...], dim: int, num_outputs: int, dropout: float, heads: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"xattn: embed_dim {dim} must be divisible by xattn_heads {heads}")
        self.modalities = tuple(modalities)
        self.attend = nn.ModuleDict(
            {
                f"{m}_to_{n}": nn.MultiheadAttention(dim, heads, batch_first=True)
                for m in modalities
                for n in modalities
                if n != m
            }
        )
        self.norms = nn.ModuleDict({m: nn.LayerNorm(dim) for m in modalities})
        self.head = classifier(len(modalities) * dim, dim, num_outputs, dropout)

    def forward(self, hs, mask, ctx):
        tokens = {m: ctx[f"seq_{m}"] for m in self.modalities}  # masked tokens
        pads = {m: ctx.get(f"pad_{m}") for m in self.modalities}
        summaries = []
        for i, m in enumerate(self.modalities):
            x = tokens[m]
            for j, n in enumerate(self.modalities):
                if n != m:
                    attend = self.attend[f"{m}_to_{n}"]
                    att, _ = attend(tokens[m], tokens[n], tokens[n], key_padding_mask=pads[n], need_weights=False)
                    x = x + mask[:, j : j + 1, None] * att
            summaries.append(masked_mean(self.norms[m](x), pads[m]) * mask[:, i : i + 1])  # [B, D]
        logits = self.head(torch.cat(summaries, dim=1))
        return logits, masked_normalise(torch.stack([safe_norm(s) for s in summaries], dim=1), mask)


class UncertaintyFusion(nn.Module):
    """Uncertainty-weighted fusion of variational embeddings.

    w = softmax((1 / sigma) / T) over the present modalities (``uncertainty_weights``), head on
    [w_1 h_1 ; ... ; w_M h_M]. ``modality_weights`` = w: the confidence-based share of each modality.
    """

    def __init__(
        self, modalities: tuple[str, ...], dim: int, num_outputs: int, dropout: float, temperature: float = 1.0
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"uncertainty_temperature must be > 0, got {temperature}")
        self.modalities, self.temperature = tuple(modalities), float(temperature)
        self.head = classifier(len(modalities) * dim, dim, num_outputs, dropout)

    def forward(self, hs, mask, ctx):
        w = uncertainty_weights([ctx[f"logvar_{m}"] for m in self.modalities], mask, self.temperature)
        return self.head(weighted_concat(hs, w)), w


class GatedUncertaintyFusion(nn.Module):
    """Mix of the uncertainty weights and a learned gate: w = alpha w_unc + (1 - alpha) w_gate.

    w_gate = gate_shares(W [h_1; ...; h_M] + b) (init: first modality ``gate_init``), head on
    [w_1 h_1 ; ... ; w_M h_M]. ``modality_weights`` = w (the mixed share of each modality). Extra output
    "gate" = w_gate [B, M] (for the gate regulariser).
    """

    def __init__(
        self,
        modalities: tuple[str, ...],
        dim: int,
        num_outputs: int,
        dropout: float,
        temperature: float = 1.0,
        alpha: float = 0.5,
        gate_init: float = 0.3,
    ):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"gate_alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"uncertainty_temperature must be > 0, got {temperature}")
        self.modalities = tuple(modalities)
        self.temperature, self.alpha = float(temperature), float(alpha)
        m = len(modalities)
        self.gate = nn.Linear(m * dim, m - 1)
        init_gate(self.gate, gate_init)
        self.head = classifier(m * dim, dim, num_outputs, dropout)

    def forward(self, hs, mask, ctx):
        w_gate = gate_shares(self.gate(torch.cat(hs, dim=1)), mask)  # [B, M]
        w_unc = uncertainty_weights([ctx[f"logvar_{m}"] for m in self.modalities], mask, self.temperature)
        w = self.alpha * w_unc + (1.0 - self.alpha) * w_gate
        return self.head(weighted_concat(hs, w)), w, {"gate": w_gate}


class HierarchicalFusion(nn.Module):
    """Hierarchical auto-fusion with reconstruction.

    Level 1 (per modality): c_m = GELU(E_m h_m) [B, k], reconstructed as D_m c_m ~ h_m.
    Gate: w = gate_shares(W [c_1; ...; c_M] + b) (init: first modality ``gate_init``, forced by the mask).
    Level 2 (global): z = GELU(E [w_1 c_1 ; ... ; w_M c_M]) [B, k] compresses the concatenation and is
    reconstructed as D z ~ [h_1 ; ... ; h_M]; the head reads z.
    Extra outputs for the losses: "recon" / "recon_target" [B, M D] (global), "recon_<m>" / "target_<m>"
    [B, D] per modality, "gate" = w [B, M]. Reconstructions are multiplied by the mask, so a missing
    modality (target 0) adds no reconstruction error.
    ``modality_weights`` = w: each modality's share of the gated input to the bottleneck.
    """

    def __init__(
        self,
        modalities: tuple[str, ...],
        dim: int,
        num_outputs: int,
        dropout: float,
        bottleneck: int = 0,
        gate_init: float = 0.3,
    ):
        super().__init__()
        self.modalities = tuple(modalities)
        m, k = len(modalities), bottleneck or max(dim // 2, 1)
        self.enc = nn.ModuleDict({n: nn.Sequential(nn.Linear(dim, k), nn.GELU()) for n in modalities})
        self.dec = nn.ModuleDict({n: nn.Linear(k, dim) for n in modalities})
        self.gate = nn.Linear(m * k, m - 1)
        init_gate(self.gate, gate_init)
        self.enc_global = nn.Sequential(nn.Linear(m * k, k), nn.GELU())
        self.dec_global = nn.Linear(k, m * dim)
        self.head = classifier(k, dim, num_outputs, dropout)

    def forward(self, hs, mask, ctx=None):
        cs = [self.enc[n](h) for n, h in zip(self.modalities, hs)]  # M x [B, k]
        w = gate_shares(self.gate(torch.cat(cs, dim=1)), mask)  # [B, M]
        z = self.enc_global(weighted_concat(cs, w))
        dim = hs[0].shape[1]
        present = torch.cat([mask[:, i : i + 1].expand(-1, dim) for i in range(len(hs))], dim=1)  # [B, M D]
        extra = {"recon": self.dec_global(z) * present, "recon_target": torch.cat(hs, dim=1)}
        for i, (n, c, h) in enumerate(zip(self.modalities, cs, hs)):
            extra[f"recon_{n}"] = self.dec[n](c) * mask[:, i : i + 1]
            extra[f"target_{n}"] = h
        extra["gate"] = w
        return self.head(z), w, extra


def _unimodal(modality: str):
    return lambda cfg: UnimodalHead(cfg.modalities, cfg.embed_dim, cfg.num_outputs, cfg.dropout, modality)


FUSION_BUILDERS = {
    "gated": lambda cfg: GatedFusion(cfg.modalities, cfg.embed_dim, cfg.num_outputs, cfg.dropout, cfg.gate_init_audio),
    "audio": _unimodal("audio"),
    "video": _unimodal("video"),
    "text": _unimodal("text"),
    "late": lambda cfg: LateFusion(cfg.modalities, cfg.embed_dim, cfg.num_outputs, cfg.dropout),
    "concat": lambda cfg: ConcatFusion(cfg.modalities, cfg.embed_dim, cfg.num_outputs, cfg.dropout),
    "xattn": lambda cfg: CrossAttentionFusion(
        cfg.modalities, cfg.embed_dim, cfg.num_outputs, cfg.dropout, cfg.xattn_heads
    ),
    "uncertainty": lambda cfg: UncertaintyFusion(
        cfg.modalities, cfg.embed_dim, cfg.num_outputs, cfg.dropout, cfg.uncertainty_temperature
    ),
    "gated_uncertainty": lambda cfg: GatedUncertaintyFusion(
        cfg.modalities,
        cfg.embed_dim,
        cfg.num_outputs,
        cfg.dropout,
        cfg.uncertainty_temperature,
        cfg.gate_alpha,
        cfg.gate_init_audio,
    ),
    "hierarchical": lambda cfg: HierarchicalFusion(
        cfg.modalities, cfg.embed_dim, cfg.num_outputs, cfg.dropout, cfg.bottleneck_dim, cfg.gate_init_audio
    ),
}
