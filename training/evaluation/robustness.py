"""Evaluation under a missing or noisy modality (``avemo evaluate --drop audio|video --noise SNR_DB``)."""

from __future__ import annotations

from avemo.training.data.perturb import PerturbedDataset, condition, describe
from avemo.training.evaluation.predict import evaluate_predictions, predict
from avemo.training.evaluation.reports import per_class_report


def evaluate_condition(
    model,
    ds,
    labels: list[str],
    drop: str | None = None,
    noise_snr_db: float | None = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[dict, dict]:
    """Predict ``ds`` under one condition -> (metrics as ``evaluate_predictions`` returns them plus
    ``per_class`` and ``condition``, window-level predictions)."""
    wrapped = PerturbedDataset(ds, drop, noise_snr_db, seed) if (drop or noise_snr_db is not None) else ds
    pred = predict(model, wrapped, progress=progress, desc=describe(drop, noise_snr_db))
    result = evaluate_predictions(pred, labels)
    result["per_class"] = per_class_report(result["clip"]["confusion_matrix"], labels)
    result["condition"] = condition(drop, noise_snr_db, seed)
    return result, pred
