"""A model's answers on a window dataset, and the metrics computed from them.

``predict`` runs the model once over a dataset (float32, on the model's device) and returns the
window-level arrays every report reads; ``clip_means`` aggregates them per clip (the clip label is
the argmax of the mean of its window probabilities, as the client does); ``evaluate_predictions``
turns them into window- and clip-level metrics; ``evaluate`` is the two in one call.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from avemo.contract.progress import progress as progress_bar
from avemo.training.evaluation.metrics import classification_metrics
from avemo.training.evaluation.sentiment_metrics import regression_metrics
from avemo.training.models.model import FusionModel, model_inputs


def _answers(model: FusionModel, o: dict[str, torch.Tensor], out: dict[str, list]) -> None:
    """One batch of outputs into the lists of ``predict``: probabilities (classification) or the predicted
    value (regression), for the fused answer and each auxiliary head."""
    regression = getattr(model, "task", "classification") == "regression"
    for name in ("", *(f"{m}_" for m in model.modalities)):
        logits = o.get(f"{name}logits")
        if logits is None:
            continue
        if regression:
            out.setdefault(f"{name}prediction", []).append(logits.float()[:, 0].cpu().numpy())
        else:
            out.setdefault(f"{name}probs", []).append(torch.softmax(logits.float(), -1).cpu().numpy())
    out.setdefault("modality_weights", []).append(o["modality_weights"].float().cpu().numpy())


@torch.no_grad()
def predict(
    model: FusionModel, ds, batch_size: int = 64, progress: bool = False, desc: str = "eval"
) -> dict[str, np.ndarray]:
    """Window-level answers (a feature example is one "window" of its own "clip"): probs [N, C] and
    <m>_probs [N, C] per auxiliary head (classification) or prediction [N] and <m>_prediction [N]
    (regression), modality_weights [N, M], clip [N] (clip index in the dataset), label [N]."""
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    out: dict[str, list] = {}
    batches = DataLoader(ds, batch_size=batch_size, collate_fn=getattr(ds, "collate", None))
    for batch in progress_bar(batches, desc=desc, leave=False, disable=not progress):
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        _answers(model, model(*model_inputs(model, batch)), out)
        out.setdefault("clip", []).append(batch["clip"].cpu().numpy())
        out.setdefault("label", []).append(np.asarray(batch["label"].cpu()))
    return {k: np.concatenate(v) for k, v in out.items() if v}


# condition -> modalities kept; "no_<m>" drops modality m
def condition_keeps(condition: str, modalities: tuple[str, ...]) -> tuple[float, ...]:
    """ "full" keeps every modality, "no_<m>" drops m: one keep value (1 or 0) per modality."""
    if condition == "full":
        return tuple(1.0 for _ in modalities)
    dropped = condition.removeprefix("no_")
    if not condition.startswith("no_") or dropped not in modalities:
        raise ValueError(f"condition must be full or no_<modality> with one of {modalities}, got {condition!r}")
    return tuple(0.0 if m == dropped else 1.0 for m in modalities)


KEEPS = {c: condition_keeps(c, ("audio", "video")) for c in ("full", "no_audio", "no_video")}  # the clip model's


@torch.no_grad()
def predict_conditions(
    model: FusionModel, ds, conditions: list[str], batch_size: int = 64
) -> dict[str, dict[str, np.ndarray]]:
    """``predict`` under several conditions ("full", "no_<m>") with one encoder pass per batch
    (``FusionModel.forward_dropping``): {condition: the arrays ``predict`` returns}. A dropped
    modality is exactly what ``PerturbedDataset(drop=...)`` gives: no content, mask entry 0."""
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    keeps = [condition_keeps(c, model.modalities) for c in conditions]
    out: dict[str, dict[str, list]] = {c: {} for c in conditions}
    for batch in DataLoader(ds, batch_size=batch_size, collate_fn=getattr(ds, "collate", None)):
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        outs = model.forward_dropping(*model_inputs(model, batch), keeps=keeps)
        for c, o in zip(conditions, outs):
            _answers(model, o, out[c])
            out[c].setdefault("clip", []).append(batch["clip"].cpu().numpy())
            out[c].setdefault("label", []).append(np.asarray(batch["label"].cpu()))
    return {c: {k: np.concatenate(v) for k, v in arrays.items()} for c, arrays in out.items()}


def clip_means(pred: dict[str, np.ndarray], key: str = "probs") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per clip: (clip ids [K], true labels [K], mean of ``pred[key]`` over the clip's windows [K, C])."""
    clips = np.unique(pred["clip"])
    mean = np.stack([pred[key][pred["clip"] == c].mean(0) for c in clips])
    labels = np.array([pred["label"][pred["clip"] == c][0] for c in clips])
    return clips, labels, mean


def window_cross_entropy(pred: dict[str, np.ndarray]) -> float:
    """Mean cross-entropy of the fused answer over the windows: mean of -log p[label] (no class weights,
    no label smoothing; probabilities floored at 1e-12). The "validation loss" a search ranks by."""
    p = pred["probs"][np.arange(len(pred["label"])), np.asarray(pred["label"], int)]
    return float(-np.log(np.maximum(p, 1e-12)).mean())


def evaluate_predictions(pred: dict[str, np.ndarray], labels: list[str], dataset: str = "mosei") -> dict:
    """Classification: {"window": metrics + "loss" (``window_cross_entropy``), "clip": metrics,
    "mean_modality_weights": [per modality]} of ``predict``'s output.
    Regression: {"regression": MMSA's metrics of ``dataset`` (``sentiment_metrics.regression_metrics``),
    "loss": the mean squared error, "mean_modality_weights"}."""
    weights = pred["modality_weights"].mean(0).tolist()
    if "prediction" in pred:
        m = regression_metrics(pred["prediction"], pred["label"], dataset)
        return {"regression": m, "loss": m["MSE"], "n": int(len(pred["label"])), "mean_modality_weights": weights}
    _, y, mean = clip_means(pred)
    return {
        "window": classification_metrics(pred["label"], pred["probs"].argmax(1), labels)
        | {"loss": window_cross_entropy(pred)},
        "clip": classification_metrics(y, mean.argmax(1), labels),
        "mean_modality_weights": weights,
    }


def evaluate(model: FusionModel, ds, labels: list[str], progress: bool = False, desc: str = "eval") -> dict:
    """``evaluate_predictions(predict(model, ds), labels)`` (the dataset's name picks the regression metrics)."""
    return evaluate_predictions(
        predict(model, ds, progress=progress, desc=desc), labels, getattr(ds, "dataset_name", "mosei")
    )
