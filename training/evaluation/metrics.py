"""Classification metrics (scikit-learn: ``accuracy_score``, ``f1_score``, ``confusion_matrix``) and plots
(matplotlib, Agg): confusion matrix and loss curves. Sentiment regression (MOSI / MOSEI / SIMS):
``sentiment_metrics``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix


def class_indices(y, num_classes: int, name: str = "y") -> np.ndarray:
    """``y`` as a flat int array of class indices, each in [0, num_classes) (else ``ValueError``: scikit-learn
    would silently drop an out-of-range index from the confusion matrix, numpy would wrap a negative one)."""
    a = np.asarray(y, dtype=int).reshape(-1)
    if a.size and (a.min() < 0 or a.max() >= num_classes):
        raise ValueError(f"{name} has class indices outside [0, {num_classes}): {sorted(set(a.tolist()))[:10]}")
    return a


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """[C, C] int64 counts, rows = true class, columns = predicted class (all zeros for no samples)."""
    y_true, y_pred = class_indices(y_true, num_classes, "y_true"), class_indices(y_pred, num_classes, "y_pred")
    if y_true.size == 0 and y_pred.size == 0:  # scikit-learn refuses empty input
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    return sk_confusion_matrix(y_true, y_pred, labels=np.arange(num_classes)).astype(np.int64)


def per_class_scores(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, F1) per class [C] each from a [C, C] confusion matrix; 0 where undefined."""
    cm = np.asarray(cm)
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(0), out=np.zeros_like(tp), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros_like(tp), where=cm.sum(1) > 0)
    denom = precision + recall
    return precision, recall, np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)


def classification_metrics(y_true, y_pred, labels: list[str]) -> dict:
    """n, accuracy, macro-F1 (over the classes present in y_true or y_pred), weighted F1 (per-class F1
    weighted by true support: the usual emotion-recognition-in-conversation figure), per-class F1 (0 for a
    class never true nor predicted, or never right), confusion matrix. All 0 for no samples.

    scikit-learn with ``zero_division=0`` gives the same numbers as the hand-written precision/recall/F1 this
    replaced (kept as ``per_class_scores`` for the reports): F1 = 2 tp / (2 tp + fp + fn), 0 where undefined.
    macro-F1 is averaged over the present classes only (``labels=`` the classes seen), not over all C:
    ``labels=range(C)`` would count every class absent from both as an F1 of 0 and change the number."""
    num_classes = len(labels)
    y_true, y_pred = class_indices(y_true, num_classes, "y_true"), class_indices(y_pred, num_classes, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} values, y_pred {y_pred.size}")
    cm = confusion_matrix(y_true, y_pred, num_classes)
    if y_true.size == 0:  # scikit-learn refuses empty input; the previous code returned zeros
        accuracy = macro_f1 = weighted_f1 = 0.0
        per_class = np.zeros(num_classes)
    else:
        all_classes = np.arange(num_classes)
        accuracy = float(accuracy_score(y_true, y_pred))
        present = np.union1d(y_true, y_pred)
        macro_f1 = float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))
        weighted_f1 = float(f1_score(y_true, y_pred, labels=all_classes, average="weighted", zero_division=0))
        per_class = f1_score(y_true, y_pred, labels=all_classes, average=None, zero_division=0)
    return {
        "n": int(cm.sum()),
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "weighted_f1": weighted_f1,
        "per_class_f1": {label: float(v) for label, v in zip(labels, per_class)},
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
    regression = any("val_corr" in h for h in history)
    if any("val_loss" in h for h in history):
        val_label = "val (MSE)" if regression else "val (window CE)"
        ax1.plot(epochs, [h.get("val_loss", np.nan) for h in history], "k--", label=val_label)
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend(), ax1.set_title("loss")
    if regression:
        panel = (("val_corr", "-"), ("val_mae", "--"), ("val_Non0_acc_2", ":"), ("val_Mult_acc_7", ":"))
        title = "validation: Pearson corr, MAE, Acc-2 (non-zero), Acc-7"
    else:
        panel = (("train_macro_f1", "-"), ("val_macro_f1", "-"), ("train_accuracy", ":"), ("val_accuracy", ":"))
        title = "macro-F1 / accuracy"
    for key, style in panel:
        if any(key in h for h in history):
            ax2.plot(epochs, [h.get(key, np.nan) for h in history], style, label=key)
    ax2.set_xlabel("epoch"), ax2.legend(), ax2.set_title(title)
    if not regression:
        ax2.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_regression(pred: np.ndarray, truth: np.ndarray, path: Path, title: str) -> None:
    """Predicted against true score, one dot per example, with the identity line: where a regression model
    is biased or compressed towards the mean shows at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    lo, hi = float(min(truth.min(), pred.min())), float(max(truth.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="prediction = truth")
    ax.scatter(truth, pred, s=6, alpha=0.5)
    ax.set_xlabel("true score"), ax.set_ylabel("predicted score"), ax.set_title(title, fontsize=9), ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
