"""Predict emotions for clip files through the served model, window by window as answers arrive.

The clip is read by the shared incremental pipeline (``contract.stream.ClipStream``) with the SERVED
window geometry (read from the model config): each window is sent over one gRPC stream as soon as its
last sample and frame are decoded, so memory stays flat in clip length and the first answer comes
after the first window, not after the whole file. ``realtime=True`` paces the file at 1x like a live
source; each answer then carries its lag: the time from the window's last media sample to its answer.

The clip label is the argmax of the mean of the (smoothed, see ``client.smoothing``) window probabilities.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from avemo.client.grpc_client import EmotionClient, WindowResult
from avemo.client.smoothing import Smoother
from avemo.contract.endpoint import LAG_BUDGET_S
from avemo.contract.faces import FaceBox
from avemo.contract.stream import ClipStream


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q)) if values else 0.0


def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"p50": _percentile(values, 50), "p95": _percentile(values, 95), "max": float(np.max(values))}


def window_entry(r: WindowResult, labels: list[str], window_seconds: float, smoothed=None) -> dict:
    """One timeline row: the window's own answer, its smoothed probabilities and label, timings."""
    entry: dict[str, Any] = {
        "index": int(r.index),
        "start": round(float(r.start), 3),
        "end": round(float(r.start) + window_seconds, 3),
        "latency_ms": float(r.latency_ms),
        "lag_ms": None if r.lag_ms is None else float(r.lag_ms),
        "error": getattr(r, "error", None),
        "shed": bool(getattr(r, "shed", False)),  # dropped: its answer would have come after the lag budget
        "late": bool(getattr(r, "late", False)),  # answered after the lag budget
    }
    if entry["error"] is not None or r.probs is None or r.modality_weights is None:
        return {**entry, "label": None, "prob": None, "probs": None, "modality_weights": None, "smoothed": None}
    probs, weights = r.probs, r.modality_weights  # an answered window has both
    k = int(np.argmax(probs))
    s = np.asarray(probs if smoothed is None else smoothed, np.float64)
    return {
        **entry,
        "label": labels[k],
        "prob": float(probs[k]),
        "probs": {lab: float(p) for lab, p in zip(labels, probs)},
        "modality_weights": {"audio": float(weights[0]), "video": float(weights[1])},
        "smoothed": {lab: float(p) for lab, p in zip(labels, s)},
        "smoothed_label": labels[int(np.argmax(s))],
    }


def summarise(path, timeline: list[dict], labels: list[str], duration: float | None = None, **extra) -> dict:
    """The prediction dict for one clip from its timeline rows (``window_entry``)."""
    answered = [w for w in timeline if w["error"] is None]
    if not answered:
        reasons = "; ".join(sorted({w["error"] for w in timeline})) or "the clip gave no windows"
        raise ValueError(f"{path}: no window was predicted ({reasons})")
    if duration is not None and duration > 0:
        for w in timeline:
            w["end"] = round(min(w["end"], max(duration, w["start"])), 3)
    mean = np.mean([[w["smoothed"][lab] for lab in labels] for w in answered], axis=0)
    lat = [w["latency_ms"] for w in answered]
    return {
        "clip": str(path),
        "label": labels[int(np.argmax(mean))],
        "probs": {lab: float(p) for lab, p in zip(labels, mean)},
        "timeline": timeline,
        "latency_ms": {**(_stats(lat) or {}), "mean": float(np.mean(lat))},  # lat is not empty: answered is not
        "lag_ms": _stats([w["lag_ms"] for w in answered if w["lag_ms"] is not None]),
        "duration": float(duration) if duration is not None else None,
        "windows": len(timeline),
        "refused": sum(1 for w in timeline if w["error"] is not None and not w.get("shed")),
        "shed": sum(1 for w in timeline if w.get("shed")),
        "late": sum(1 for w in answered if w.get("late")),
        **extra,
    }


def predict_clip(
    client: EmotionClient,
    path,
    face_crop: str = "auto",
    smoothing: str = "none",
    realtime: bool = False,
    on_window: Callable[[dict], None] | None = None,
    lag_budget: float | None = LAG_BUDGET_S,
    on_face: Callable[[FaceBox], None] | None = None,
) -> dict:
    """Stream ``path``'s windows through the served model; ``on_window(row)`` is called as each answer arrives.
    ``on_face(box)`` gets the face box (or centre square) each sampled frame's crop was cut from, in frame
    order (``avemo.client.annotate`` draws them).

    Returns the prediction dict (clip label, probabilities, timeline, latency, lag in real-time mode,
    ``first_answer_s``, ``wall_s``). A window the server refused is a timeline row with ``error`` set.
    Raises ``contract.media.MediaError`` for unreadable clips and ``EmotionClientError`` for server errors.
    """
    served = client.model()
    g = served.geometry
    smoother = Smoother(smoothing)
    stream = ClipStream(Path(path), g, face_crop, realtime=realtime, on_face=on_face)
    t0 = time.perf_counter()
    first = None
    timeline = []
    # a live source drops what would come too late; a file read as fast as it decodes gets every window
    for r in client.stream_iter(stream, lag_budget=lag_budget if realtime else None):
        if first is None:
            first = time.perf_counter() - t0
        smoothed = smoother.update(r.probs) if getattr(r, "error", None) is None else None
        row = window_entry(r, served.labels, g.window_seconds, smoothed)
        if not realtime:
            row["lag_ms"] = None  # media came faster than real time: only the round trip means something
        timeline.append(row)
        if on_window is not None:
            on_window(row)
    wall = time.perf_counter() - t0
    return summarise(
        path,
        timeline,
        served.labels,
        duration=stream.duration,
        crop_method=stream.crop_method,
        model={"name": served.name, "version": served.version},
        modalities={"audio": bool(stream.has_audio), "video": bool(stream.has_video)},
        smoothing=smoothing,
        realtime=bool(realtime),
        first_answer_s=float(first) if first is not None else None,
        wall_s=float(wall),
        realtime_factor=float(wall / stream.duration) if stream.duration else None,
    )


def format_header() -> str:
    return f"  {'time (s)':>15}  {'label':<10} {'prob':>6}  {'smoothed':<10}  {'audio':>6} {'video':>6}  {'ms':>7}"


def format_window(w: dict) -> str:
    """One printed line per answered (or refused) window."""
    rng = f"{w['start']:.2f}-{w['end']:.2f}"
    if w.get("shed"):
        return f"  {rng:>15}  dropped ({w['error'][len('shed: ') :]})"
    if w["error"] is not None:
        return f"  {rng:>15}  refused by the server: {w['error']}"
    mw = w["modality_weights"]
    ms = w["lag_ms"] if w["lag_ms"] is not None else w["latency_ms"]
    return (
        f"  {rng:>15}  {w['label']:<10} {w['prob']:6.3f}  {w['smoothed_label']:<10}  {mw['audio']:6.3f} "
        f"{mw['video']:6.3f}  {ms:7.1f}"
    )


def format_summary(pred: dict) -> str:
    """The clip line after the windows: metadata, label, latency or lag."""
    meta = []
    if pred.get("duration") is not None:
        meta.append(f"{pred['duration']:.2f} s")
    dropped = [f"{pred[k]} {k}" for k in ("refused", "shed", "late") if pred.get(k)]
    meta.append(f"{pred['windows']} windows" + (f" ({', '.join(dropped)})" if dropped else ""))
    if pred.get("crop_method"):
        meta.append(f"face crop: {pred['crop_method']}")
    mods = pred.get("modalities")
    if mods:
        meta.append("modalities: " + ("+".join(k for k, v in mods.items() if v) or "none"))
    if pred.get("first_answer_s") is not None:
        rtf = pred.get("realtime_factor") or 0.0
        meta.append(f"first answer after {pred['first_answer_s']:.2f} s, real-time factor {rtf:.2f}")
    top = sorted(pred["probs"].items(), key=lambda kv: -kv[1])[:3]
    lat, lag = pred["latency_ms"], pred.get("lag_ms")
    timing = f"round trip p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms"
    if lag:
        timing = f"lag (last media sample -> answer) p50 {lag['p50']:.1f} ms, p95 {lag['p95']:.1f} ms; " + timing
    return "\n".join(
        [
            "  " + ", ".join(meta),
            f"  clip label: {pred['label']} ({pred['probs'][pred['label']]:.3f}; "
            + ", ".join(f"{k} {v:.3f}" for k, v in top[1:])
            + f"), smoothing {pred.get('smoothing', 'none')}",
            f"  {timing}",
        ]
    )


def format_prediction(pred: dict) -> str:
    """The whole readable report of one clip (header, one line per window, summary)."""
    lines = [str(pred["clip"]), format_header()] + [format_window(w) for w in pred["timeline"]]
    return "\n".join(lines + [format_summary(pred)])


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
        rows = [w for w in pred["timeline"] if w["error"] is None]
        mids = [(w["start"] + w["end"]) / 2 for w in rows]
        for lab in labels:
            ys = [w["smoothed"][lab] for w in rows]
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
