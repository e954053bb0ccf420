"""Prediction timelines as files: the JSON ``avemo predict --json`` prints, and a flat CSV with one row per window.

    write_timeline_json(preds, "timeline.json")   # [{"clip", "label", "probs", "timeline": [...], ...}, ...]
    write_timeline_csv(preds, "timeline.csv")     # clip,window,start,end,label,prob,...,p_<label>,...

``preds`` are prediction dicts of ``avemo.client.predict.predict_clip`` (the app's downloads and
``avemo predict --timeline-json/--timeline-csv`` write the same files). CSV columns, in order:

- ``clip``: the clip's path as given (the app: the uploaded file's name)
- ``window``: the window's index; ``start``, ``end``: where its media starts and ends (s)
- ``label``, ``prob``: the window's own top class and its probability
- ``smoothed_label``, ``smoothed_prob``: the running label after smoothing (``--smooth``; equal to ``label``
  and ``prob`` without smoothing) and its smoothed probability
- ``audio_weight``, ``video_weight``: how much each modality drove the window's prediction
- ``latency_ms``: the window's round trip to Triton
- ``error``: why the server refused the window (its other columns are then empty), else empty
- ``p_<label>``: the window's probability of each class, in the served model's label order
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

CSV_COLUMNS = (
    "clip",
    "window",
    "start",
    "end",
    "label",
    "prob",
    "smoothed_label",
    "smoothed_prob",
    "audio_weight",
    "video_weight",
    "latency_ms",
    "error",
)
DIGITS = 6  # probabilities and weights in the CSV are rounded to this many decimals


def csv_columns(labels: Iterable[str]) -> list[str]:
    """The CSV header: ``CSV_COLUMNS`` then one ``p_<label>`` column per class."""
    return [*CSV_COLUMNS, *(f"p_{lab}" for lab in labels)]


def _labels(preds: Sequence[dict]) -> list[str]:
    """Class names in label order (the clips of one run share the served model's labels)."""
    labels: list[str] = []
    for pred in preds:
        labels += [lab for lab in pred["probs"] if lab not in labels]
    return labels


def _r(value: float | None, digits: int = DIGITS) -> float | str:
    return "" if value is None else round(float(value), digits)


def csv_rows(pred: dict, labels: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One dict per window of one clip's timeline, keyed by ``csv_columns(labels)``."""
    labels = list(pred["probs"]) if labels is None else list(labels)
    rows: list[dict[str, Any]] = []
    for w in pred["timeline"]:
        row: dict[str, Any] = {k: "" for k in csv_columns(labels)}
        row.update(clip=str(pred["clip"]), window=w.get("index", len(rows)), start=w["start"], end=w["end"])
        row["latency_ms"] = _r(w.get("latency_ms"), 3)
        if w.get("error") is not None:
            row["error"] = w["error"]
            rows.append(row)
            continue
        smoothed = w.get("smoothed") or w["probs"]
        s_label = w.get("smoothed_label") or max(smoothed, key=smoothed.get)
        mw = w["modality_weights"]
        row.update(
            label=w["label"],
            prob=_r(w["prob"]),
            smoothed_label=s_label,
            smoothed_prob=_r(smoothed[s_label]),
            audio_weight=_r(mw["audio"]),
            video_weight=_r(mw["video"]),
        )
        row.update({f"p_{lab}": _r(w["probs"].get(lab)) for lab in labels})
        rows.append(row)
    return rows


def write_timeline_csv(preds: Sequence[dict], path: str | Path) -> Path:
    """Every window of every clip as one CSV row (see the module docstring for the columns)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = _labels(preds)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=csv_columns(labels))
        writer.writeheader()
        for pred in preds:
            writer.writerows(csv_rows(pred, labels))
    return path


def write_timeline_json(preds: Sequence[dict], path: str | Path) -> Path:
    """The list of prediction dicts, as ``avemo predict --json`` prints it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(preds), indent=2) + "\n", encoding="utf-8")
    return path


def read_timeline_csv(path: str | Path) -> list[dict[str, str]]:
    """The CSV's rows as dicts of strings (for scripts and tests)."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
