"""Classification metrics (numpy) and plots (matplotlib, Agg): confusion matrix and loss curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """[C, C] counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def per_class_scores(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, F1) per class [C] each from a [C, C] confusion matrix; 0 where undefined."""
    cm = np.asarray(cm)
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(0), out=np.zeros_like(tp), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros_like(tp), where=cm.sum(1) > 0)
    denom = precision + recall
    return precision, recall, np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)


def classification_metrics(y_true, y_pred, labels: list[str]) -> dict:
    """accuracy, macro-F1 (over classes present in y_true or y_pred), per-class F1, confusion matrix."""
    cm = confusion_matrix(y_true, y_pred, len(labels))
    f1 = per_class_scores(cm)[2]
    present = (cm.sum(0) + cm.sum(1)) > 0
    return {
        "n": int(cm.sum()),
        "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_f1": {label: float(v) for label, v in zip(labels, f1)},
        "confusion_matrix": cm.tolist(),
    }


def plot_confusion(cm, labels: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(labels), 0.8 + 0.7 * len(labels)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_history(history: list[dict], path: Path) -> None:
    """Training loss curves per component (weights in force not drawn) and the validation cross-entropy;
    train/val macro-F1 and accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key in sorted(
        {k for h in history for k in h if k.startswith("train_loss_") and not k.startswith("train_loss_w_")}
    ):
        ax1.plot(epochs, [h.get(key, np.nan) for h in history], label=key.removeprefix("train_loss_"))
    if any("val_loss" in h for h in history):
        ax1.plot(epochs, [h.get("val_loss", np.nan) for h in history], "k--", label="val (window CE)")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend(), ax1.set_title("loss")
    for key, style in (("train_macro_f1", "-"), ("val_macro_f1", "-"), ("train_accuracy", ":"), ("val_accuracy", ":")):
        ax2.plot(epochs, [h.get(key, np.nan) for h in history], style, label=key)
    ax2.set_xlabel("epoch"), ax2.set_ylim(0, 1), ax2.legend(), ax2.set_title("macro-F1 / accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
