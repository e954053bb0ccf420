"""The training objective: static ``LossWeights``, the terms a model's outputs allow, and their sum.

``loss_terms(outputs, target, weights, ...)`` reads the keys present in the model's output dict (see
its docstring) and returns each raw loss (``avemo.training.losses.terms``) with its static weight;
``combine(terms, dynamic)`` sums w_k * m_k * L_k, where the optional multipliers m_k come from
``avemo.training.losses.weighting.LossWeighter``. The trainer calls these two (so the weighter can
see the raw terms in between); ``compute_losses`` is both in one call.

``LossWeights`` fields with "help" metadata are ``avemo train`` options (see ``avemo.contract.options``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from avemo.training.losses.terms import (
    CONTRASTIVE_PAIRS,
    MODALITIES,
    REGRESSION_LOSSES,
    classification_loss,
    contrastive_loss,
    distillation,
    gate_regularisation,
    gaussian_distillation,
    kl_divergence,
    reconstruction_loss,
    regression_loss,
)

HELP_SECTION = "losses"  # help section of the options below


def comma_floats(text: str) -> tuple[float, ...]:
    """Comma-separated numbers -> floats: "1,2,3" -> (1.0, 2.0, 3.0); empty items are ignored."""
    return tuple(float(x) for x in text.split(",") if x.strip())


def _option(flag: str, help: str, **more) -> dict:
    return {"flag": flag, "help": help, "group": HELP_SECTION, **more}


@dataclass
class LossWeights:
    """Static loss weights and classification options."""

    ce: float = 1.0  # the main loss: fused cross-entropy / focal, or the regression loss
    # 1.0 rather than the seeds' 0.3: a window with one modality missing is answered by the other's auxiliary head
    # (unimodal fallback), which then has to be as good as a unimodal model (the k-fold recipe table in
    # docs/unseen_people.md)
    aux: float = field(default=1.0, metadata=_option("aux_weight", "weight of each unimodal auxiliary head's loss"))
    contrastive: float = field(
        default=0.1,
        metadata=_option(
            "contrastive_weight",
            "cross-modal InfoNCE weight (needs --contrastive_proj_dim > 0 and two or more modalities)",
            aliases=("cl_loss_weight",),
        ),
    )
    reconstruction: float = field(
        default=0.03, metadata=_option("encoder_loss_weight", "encoder reconstruction loss weight (hierarchical)")
    )
    gate_reg: float = field(
        default=0.01,
        metadata=_option("gate_reg_weight", "gate regulariser weight (hierarchical, gated_uncertainty)"),
    )
    kl: float = field(
        default=0.0, metadata=_option("kl_weight", "VAE KL weight (--variational or an uncertainty fusion)")
    )
    distill: float = field(
        default=0.0,
        metadata=_option(
            "delta_va", "teacher -> unimodal head distillation weight (needs --teacher_audio/_video/_text)"
        ),
    )
    regression_loss: str = field(
        default="mse",
        metadata=_option(
            "regression_loss", "main loss of a regression task (mse: seed 002; l1: MMSA's)", choices=REGRESSION_LOSSES
        ),
    )
    contrastive_pairs: str = field(
        default="all",
        metadata=_option(
            "contrastive_pairs",
            "InfoNCE over every modality pair, averaged (all), or each modality against text, summed (text: seed 002)",
            choices=CONTRASTIVE_PAIRS,
        ),
    )
    focal_gamma: float = field(default=0.0, metadata=_option("focal_gamma", "focal loss gamma, 0 = cross-entropy"))
    focal_alpha: tuple[float, ...] | None = field(
        default=None,
        metadata=_option(
            "focal_alpha",
            "per-class focal alpha, comma-separated, one per class",
            type=comma_floats,
        ),
    )
    label_smoothing: float = field(default=0.0, metadata=_option("label_smoothing", "label smoothing eps"))
    use_class_weight: bool = field(default=True, metadata=_option("class_weight", "inverse-frequency class weights"))
    aux_masked: bool = field(
        default=True,
        metadata=_option(
            "aux_masked",
            "an auxiliary head learns only from the windows that have its modality (after modality dropout); "
            "off: from every window, its input zeroed where missing",
        ),
    )
    use_smooth_l1: bool = field(
        default=False, metadata=_option("use_smooth_l1", "SmoothL1 instead of MSE for reconstruction (hierarchical)")
    )
    contrastive_temperature: float = field(
        default=0.07, metadata=_option("contrastive_temperature", "InfoNCE temperature")
    )
    recon_modality_weights: tuple[float, ...] = (
        1.0,
        1.0,
    )  # per-modality reconstruction weights (model order; 1 past the end)
    gate_reg_mode: str = "deviation"  # see terms.gate_regularisation
    distill_temperature: float = 2.0

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> LossWeights:
        """From ``to_dict`` output or a stored config (lists back to tuples); missing fields keep the defaults."""
        d = dict(d)
        for k in ("focal_alpha", "recon_modality_weights"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


# ---------------------------------------------------------------- terms and total
def loss_terms(
    outputs: dict[str, torch.Tensor],
    target: torch.Tensor,
    weights: LossWeights,
    class_weight: torch.Tensor | None = None,
    teacher_logits: dict[str, torch.Tensor] | None = None,
    modalities: tuple[str, ...] = MODALITIES,
    task: str = "classification",
) -> tuple[dict[str, tuple[torch.Tensor, float]], dict[str, float]]:
    """Raw loss tensors with their static weights: ({name: (value, weight)}, {extra log-only floats}).

    ``modalities``: the model's input modalities (the order of the mask columns); ``task``: "classification"
    (target [B] int64, logits [B, C]) or "regression" (target [B] float, logits [B, 1]: the prediction).
    Terms whose static weight is 0 or whose inputs are missing are left out. Output keys read:
      "logits" (required) -> "ce" (classification: cross-entropy / focal) or "mse" / "l1" (regression)
      "<m>_logits" per modality -> "aux_<m>" (the same loss as the main one); with "modality_present" [B, M]
        (the mask after modality dropout, training only) and ``aux_masked``, over the examples that have m
      "z_<m>" [B, P] (projected, two or more) -> "contrastive" (``contrastive_pairs``: every pair or against text)
      "graph_contrastive" [] (JOYFUL, training only: the graph against its augmented views) -> "contrastive"
      "recon" + "recon_target" (any shape), and/or "recon_<m>" + "recon_target_<m>" (or "target_<m>")
        -> "recon" (= sum of the per-modality losses times recon_modality_weights; the single pair has weight 1;
        per-modality values are logged)
      "gate" [B, 1] or [B, M] -> "gate_reg" (the served "modality_weights" are not used: constant for baselines)
      "mu_<m>"/"logvar_<m>" [B, D] -> "kl" (sum over modalities)
      teacher_logits {"<m>": ..., "fused": ...} distilled into "<m>_logits", "logits" -> "distill" (sum over the
        pairs present; classification: temperature-scaled KL, regression: ``gaussian_distillation``)
    """
    w = weights
    terms: dict[str, tuple[torch.Tensor, float]] = {}
    extra: dict[str, float] = {}
    if task == "regression":
        main = lambda out, t=target: regression_loss(out, t, w.regression_loss)  # noqa: E731
        main_name = w.regression_loss
    else:
        weight = class_weight if w.use_class_weight else None
        alpha = None if w.focal_alpha is None else torch.as_tensor(w.focal_alpha, dtype=torch.float32)
        main = lambda lg, t=target: classification_loss(lg, t, weight, w.focal_gamma, alpha, w.label_smoothing)  # noqa: E731
        main_name = "ce"
    terms[main_name] = (main(outputs["logits"]), w.ce)
    for i, m in enumerate(modalities):
        if f"{m}_logits" not in outputs or w.aux == 0:
            continue
        logits, tgt = outputs[f"{m}_logits"], target  # [B, C], [B]
        if w.aux_masked and "modality_present" in outputs:
            keep = outputs["modality_present"][:, i] > 0  # [B] examples whose modality the model saw
            if not bool(keep.any()):
                continue
            logits, tgt = logits[keep], tgt[keep]  # [K, C], [K]
        terms[f"aux_{m}"] = (main(logits, tgt), w.aux)
    z = {m: outputs[f"z_{m}"] for m in modalities if f"z_{m}" in outputs}
    if w.contrastive != 0 and len(z) >= 2:
        terms["contrastive"] = (contrastive_loss(z, w.contrastive_pairs, w.contrastive_temperature), w.contrastive)
    elif w.contrastive != 0 and "graph_contrastive" in outputs:  # JOYFUL: computed inside the model (graph views)
        terms["contrastive"] = (outputs["graph_contrastive"], w.contrastive)
    if w.reconstruction != 0:
        recon = []
        if "recon" in outputs and "recon_target" in outputs:
            recon.append(reconstruction_loss(outputs["recon"], outputs["recon_target"], w.use_smooth_l1))
        for i, m in enumerate(modalities):
            mw = w.recon_modality_weights[i] if i < len(w.recon_modality_weights) else 1.0
            recon_target = outputs.get(f"recon_target_{m}", outputs.get(f"target_{m}"))
            if f"recon_{m}" in outputs and recon_target is not None:
                r = reconstruction_loss(outputs[f"recon_{m}"], recon_target, w.use_smooth_l1)
                extra[f"recon_{m}"] = float(r.detach())
                recon.append(mw * r)
        if recon:
            terms["recon"] = (sum(recon[1:], recon[0]), w.reconstruction)
    if w.gate_reg != 0 and "gate" in outputs:
        terms["gate_reg"] = (gate_regularisation(outputs["gate"], w.gate_reg_mode), w.gate_reg)
    if w.kl != 0:
        kls = []
        for m in modalities:
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
                if task == "regression":
                    ds.append(gaussian_distillation(outputs[key], t))
                else:
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
    total: torch.Tensor | None = None
    parts: dict[str, float] = {}
    for name, (value, w) in terms.items():
        wk = w * dynamic.get(name, 1.0)
        total = wk * value if total is None else total + wk * value
        parts[name] = float(value.detach())
        parts[f"w_{name}"] = float(wk)
    parts.update(extra or {})
    assert total is not None, "no loss terms"
    parts["total"] = float(total.detach())
    return total, parts


def compute_losses(
    outputs: dict[str, torch.Tensor],
    target: torch.Tensor,
    weights: LossWeights,
    class_weight: torch.Tensor | None = None,
    teacher_logits: dict[str, torch.Tensor] | None = None,
    dynamic: dict[str, float] | None = None,
    modalities: tuple[str, ...] = MODALITIES,
    task: str = "classification",
) -> tuple[torch.Tensor, dict[str, float]]:
    """All losses the outputs allow (keys: see ``loss_terms``) -> (total scalar, parts dict of floats).

    ``dynamic`` {part name: multiplier} comes from ``LossWeighter.weights``; missing names use 1.
    With only "logits" + aux logits this equals ``terms.total_loss`` with the same aux weight, exactly.
    """
    terms, extra = loss_terms(outputs, target, weights, class_weight, teacher_logits, modalities, task)
    return combine(terms, dynamic, extra)
