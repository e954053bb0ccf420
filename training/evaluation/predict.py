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


@torch.no_grad()
def predict(
    model: torch.nn.Module, ds, batch_size: int = 64, progress: bool = False, desc: str = "eval"
) -> dict[str, np.ndarray]:
    """Window-level answers: probs [N, C], modality_weights [N, 2], audio_probs / video_probs [N, C]
    (fusion models' auxiliary heads only), clip [N] (clip index in ``ds.clips``), label [N]."""
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    out: dict[str, list] = {
        "probs": [],
        "modality_weights": [],
        "audio_probs": [],
        "video_probs": [],
        "clip": [],
        "label": [],
    }
    for batch in progress_bar(DataLoader(ds, batch_size=batch_size), desc=desc, leave=False, disable=not progress):
        o = model(batch["audio"].to(device), batch["frames"].to(device), batch["mask"].to(device))
        out["probs"].append(torch.softmax(o["logits"].float(), -1).cpu().numpy())
        out["modality_weights"].append(o["modality_weights"].float().cpu().numpy())
        for m in ("audio", "video"):
            if f"{m}_logits" in o:
                out[f"{m}_probs"].append(torch.softmax(o[f"{m}_logits"].float(), -1).cpu().numpy())
        out["clip"].append(batch["clip"].numpy())
        out["label"].append(np.asarray(batch["label"]))
    return {k: np.concatenate(v) for k, v in out.items() if v}


KEEPS = {"full": (1.0, 1.0), "no_audio": (0.0, 1.0), "no_video": (1.0, 0.0)}  # condition -> (audio, video) kept


@torch.no_grad()
def predict_conditions(
    model: torch.nn.Module, ds, conditions: list[str], batch_size: int = 64
) -> dict[str, dict[str, np.ndarray]]:
    """``predict`` under several ``KEEPS`` conditions with one encoder pass per batch
    (``FusionModel.forward_dropping``): {condition: the arrays ``predict`` returns}. A dropped
    modality is exactly what ``PerturbedDataset(drop=...)`` gives: no content, mask entry 0."""
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    keeps = [KEEPS[c] for c in conditions]
    out = {c: {"probs": [], "modality_weights": [], "clip": [], "label": []} for c in conditions}
    for batch in DataLoader(ds, batch_size=batch_size):
        outs = model.forward_dropping(
            batch["audio"].to(device), batch["frames"].to(device), batch["mask"].to(device), keeps
        )
        for c, o in zip(conditions, outs):
            out[c]["probs"].append(torch.softmax(o["logits"].float(), -1).cpu().numpy())
            out[c]["modality_weights"].append(o["modality_weights"].float().cpu().numpy())
            out[c]["clip"].append(batch["clip"].numpy())
            out[c]["label"].append(np.asarray(batch["label"]))
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


def evaluate_predictions(pred: dict[str, np.ndarray], labels: list[str]) -> dict:
    """{"window": metrics + "loss" (``window_cross_entropy``), "clip": metrics,
    "mean_modality_weights": [audio, video]} of ``predict``'s output."""
    _, y, mean = clip_means(pred)
    return {
        "window": classification_metrics(pred["label"], pred["probs"].argmax(1), labels)
        | {"loss": window_cross_entropy(pred)},
        "clip": classification_metrics(y, mean.argmax(1), labels),
        "mean_modality_weights": pred["modality_weights"].mean(0).tolist(),
    }


def evaluate(model: torch.nn.Module, ds, labels: list[str], progress: bool = False, desc: str = "eval") -> dict:
    """``evaluate_predictions(predict(model, ds), labels)``."""
    return evaluate_predictions(predict(model, ds, progress=progress, desc=desc), labels)
