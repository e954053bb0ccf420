"""The guides' models by name: ``avemo train --preset NAME`` sets these flags (a flag given on the command line
wins). Each entry says where its values come from; where a guide is silent, the choice is written beside it.

  mosei_tva             seed 002: the MOSEI text-audio-video regression model whose loss the grid-search guide
                        tunes: total = MSE + delta_va (KL(audio head || frozen audio model) + KL(video head ||
                        frozen video model)) + delta_nce (InfoNCE(video, text) + InfoNCE(audio, text)),
                        delta_va 0.3 and delta_nce 0.001 (the guide's "current default"). Needs the teachers:
                        --teacher_audio / --teacher_video, unimodal models trained with the presets below.
  mosei_audio_teacher   the frozen audio model of mosei_tva (--modalities a, same task and encoder)
  mosei_video_teacher   the frozen video model of mosei_tva (--modalities v)
  attention_robust_v4   seed 003: variational encoders (GELU, LayerNorm, residual; mu / logvar clamped to
                        [-10, 10]), gated-uncertainty fusion w = 0.5 w_unc + 0.5 w_gate, InfoNCE over the three
                        modality pairs averaged (weight 0.1, temperature 0.07, projection 64), focal loss gamma 2
                        with label smoothing 0.1 (so a classification task).
  joyful                seeds 000 / 001: JOYFUL on IEMOCAP (--dataset meld etc. on the command line for the others):
                        AutoFusion with the loss guides' hierarchical gate, the dialogue context, the relational
                        graph and its contrastive loss; total = NLL + cl_loss_weight 0.2 x graph contrastive +
                        encoder_loss_weight 0.05 x reconstruction (seed 001: the original's values) + gate_reg_weight
                        0.01 x gate regulariser. Batches of 8 dialogues (measured: see docs/dialogues.md).
"""

from __future__ import annotations

# dest -> value, as the argparse namespace of `avemo train` holds them
_MOSEI = {"dataset": "mosei", "task": "regression", "feature_encoder": "mlp", "regression_loss": "mse"}

PRESETS: dict[str, dict] = {
    "mosei_tva": {
        **_MOSEI,
        "modalities": "atv",
        # the guide says "adaptive TVA model" without naming the fusion: the learned softmax gate over the three
        "fusion": "gated",
        "distill": 0.3,  # --delta_va
        "delta_nce": 0.001,
        "contrastive_pairs": "text",
        "contrastive_proj_dim": 64,  # the projection size of seed 003's contrastive module (seed 002 is silent)
    },
    "mosei_audio_teacher": {**_MOSEI, "modalities": "a"},
    "mosei_video_teacher": {**_MOSEI, "modalities": "v"},
    "attention_robust_v4": {
        "dataset": "mosei",
        "modalities": "atv",
        # focal + label smoothing are classification losses; MOSEI's 7 rounded sentiment classes (Acc-7)
        "task": "classification",
        "num_classes": 7,
        "fusion": "gated_uncertainty",
        "feature_encoder": "mlp",
        "variational": True,
        "gate_alpha": 0.5,
        "contrastive_pairs": "all",
        "contrastive": 0.1,
        "contrastive_temperature": 0.07,
        "contrastive_proj_dim": 64,
        "focal_gamma": 2.0,
        "label_smoothing": 0.1,
        # the plan's VAELossComputer weight is not in the guide: a small KL keeps the variances informative
        "kl": 0.01,
    },
    "joyful": {
        "dataset": "iemocap",
        "fusion": "joyful",
        "joyful_variant": "hierarchical",
        "contrastive": 0.2,
        "reconstruction": 0.05,
        "gate_reg": 0.01,
        "batch_size": 8,
    },
}


def apply_preset(args, name: str, given_flags: dict[str, str]) -> list[str]:
    """Set ``PRESETS[name]`` on the parsed ``args`` where the command line did not set the flag; returns the
    dests it set. ValueError for an unknown name."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    unknown = [dest for dest in PRESETS[name] if not hasattr(args, dest)]
    if unknown:  # a key that is no option's dest would be set and never read
        raise ValueError(f"preset {name!r} sets {unknown}, which are not options of this command")
    applied = []
    for dest, value in PRESETS[name].items():
        if dest not in given_flags:
            setattr(args, dest, value)
            applied.append(dest)
    return applied
