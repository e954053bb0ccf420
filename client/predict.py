"""Predict emotions for clip files through the served model (decode -> windows -> gRPC stream).

The clip is decoded with the SERVED window geometry (read from the model config), cut into windows
with the shared ``contract.media`` module, streamed over one gRPC stream, and summarised: the clip
label is the argmax of the mean of the window probabilities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avemo.client.grpc_client import EmotionClient, WindowResult
from avemo.contract import media


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q)) if values else 0.0


def summarise(
    path,
    results: list[WindowResult],
    labels: list[str],
    window_seconds: float,
    duration: float | None = None,
    crop_method: str | None = None,
) -> dict:
    """The prediction dict for one clip from its window results."""
    if not results:
        raise ValueError(f"{path}: no windows were predicted")
    probs = np.stack([r.probs for r in results]).astype(np.float64)
    mean = probs.mean(axis=0)
    timeline = []
    for r in results:
        k = int(np.argmax(r.probs))
        end = r.start + window_seconds
        if duration is not None and duration > 0:
            end = min(end, max(duration, r.start))
        timeline.append(
            {
                "start": round(float(r.start), 3),
                "end": round(float(end), 3),
                "label": labels[k],
                "prob": float(r.probs[k]),
                "probs": {lab: float(p) for lab, p in zip(labels, r.probs)},
                "modality_weights": {"audio": float(r.modality_weights[0]), "video": float(r.modality_weights[1])},
                "latency_ms": float(r.latency_ms),
            }
        )
    lat = [r.latency_ms for r in results]
    return {
        "clip": str(path),
        "label": labels[int(np.argmax(mean))],
        "probs": {lab: float(p) for lab, p in zip(labels, mean)},
        "timeline": timeline,
        "latency_ms": {"p50": _percentile(lat, 50), "p95": _percentile(lat, 95), "mean": float(np.mean(lat))},
        "crop_method": crop_method,
        "duration": float(duration) if duration is not None else None,
        "windows": len(results),
    }


def predict_clip(client: EmotionClient, path, face_crop: str = "auto") -> dict:
    """Decode ``path`` with the served geometry, stream its windows, return the prediction dict.

    Raises ``contract.media.MediaError`` for unreadable clips and ``EmotionClientError`` for server errors.
    """
    served = client.model()
    clip = media.decode_clip(Path(path), served.geometry, face_crop=face_crop)
    windows = media.make_windows(clip, served.geometry)
    results = client.stream(windows)
    out = summarise(
        path,
        results,
        served.labels,
        served.geometry.window_seconds,
        duration=clip.duration,
        crop_method=clip.crop_method,
    )
    out["model"] = {"name": served.name, "version": served.version}
    out["modalities"] = {"audio": bool(clip.has_audio), "video": bool(clip.has_video)}
    return out


def format_prediction(pred: dict) -> str:
    """A readable per-window table plus the clip label and latency."""
    lines = [f"{pred['clip']}"]
    meta = []
    if pred.get("duration") is not None:
        meta.append(f"{pred['duration']:.2f} s")
    meta.append(f"{pred.get('windows', len(pred['timeline']))} windows")
    if pred.get("crop_method"):
        meta.append(f"face crop: {pred['crop_method']}")
    mods = pred.get("modalities")
    if mods:
        meta.append("modalities: " + ("+".join(k for k, v in mods.items() if v) or "none"))
    lines.append("  " + ", ".join(meta))
    lines.append(f"  {'time (s)':>15}  {'label':<10} {'prob':>6}  {'audio':>6} {'video':>6}  {'ms':>7}")
    for w in pred["timeline"]:
        rng = f"{w['start']:.2f}-{w['end']:.2f}"
        mw = w["modality_weights"]
        lines.append(
            f"  {rng:>15}  {w['label']:<10} {w['prob']:6.3f}  {mw['audio']:6.3f} {mw['video']:6.3f}  "
            f"{w.get('latency_ms', 0.0):7.1f}"
        )
    top = sorted(pred["probs"].items(), key=lambda kv: -kv[1])[:3]
    lat = pred["latency_ms"]
    lines.append(
        f"  clip label: {pred['label']} ({pred['probs'][pred['label']]:.3f}; "
        + ", ".join(f"{k} {v:.3f}" for k, v in top[1:])
        + f")   latency p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms"
    )
    return "\n".join(lines)


def plot_timelines(preds: list[dict], out_path) -> Path:
    """Stacked per-clip plots of the window probabilities over time (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_path = Path(out_path)
    n = max(1, len(preds))
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.8 * n), squeeze=False)
    for ax, pred in zip(axes[:, 0], preds):
        labels = list(pred["probs"].keys())
        mids = [(w["start"] + w["end"]) / 2 for w in pred["timeline"]]
        for lab in labels:
            ys = [w["probs"][lab] for w in pred["timeline"]]
            ax.plot(mids, ys, marker="o", ms=3, label=lab, lw=2.5 if lab == pred["label"] else 1.0)
        ax.set_ylim(0, 1)
        ax.set_xlabel("time (s, window centre)")
        ax.set_ylabel("p")
        ax.set_title(f"{Path(pred['clip']).name}: {pred['label']}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=4, loc="upper right")
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
