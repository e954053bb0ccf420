"""The work behind the app's upload tab and its public API, as plain functions (no gradio import).

One uploaded clip goes through ``predict_clip`` once, with the face boxes of the crops the model saw
(``on_face``); from that prediction come

- the API's answer (``api_answer``): label, clip probabilities, timeline rows, as ``predict_clip`` returns them
  to a ``gradio_client`` script;
- the upload tab's files (``UploadFiles``), each in a folder of its own: the annotated clip
  (``<stem>.annotated.mp4``, ``avemo.client.annotate``), and the timeline as ``<stem>.timeline.json`` /
  ``<stem>.timeline.csv`` (``avemo.client.timeline_files``: the files ``avemo predict --timeline-json/-csv``
  writes).

The JSON and the answer name the clip by its uploaded file name, never by the server's temporary path.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avemo.client.annotate import annotated_name, write_annotated
from avemo.client.grpc_client import EmotionClient
from avemo.client.predict import predict_clip
from avemo.client.timeline_files import write_timeline_csv, write_timeline_json
from avemo.contract.faces import FaceBox
from avemo.contract.media import MediaError

PLAYBACK_MAX_SIDE = 720  # the annotated clip on the page is scaled down to this longest side
KEEP_UPLOADS = 16  # output folders kept (older ones are deleted; Gradio has copied them into its cache by then)
TIMELINE_KEYS = (  # what the API's timeline rows carry (the `avemo predict --json` rows)
    "index",
    "start",
    "end",
    "label",
    "prob",
    "probs",
    "smoothed_label",
    "smoothed",
    "modality_weights",
    "latency_ms",
    "error",
)


def named(pred: dict, name: str) -> dict:
    """The prediction with ``clip`` set to the uploaded file's name (not the temporary path)."""
    return {**pred, "clip": name}


def api_answer(pred: dict) -> tuple[str, dict[str, float], list[dict[str, Any]]]:
    """(label, probabilities, timeline): what the API's ``predict_clip`` returns for a prediction."""
    timeline = [{k: w.get(k) for k in TIMELINE_KEYS} for w in pred["timeline"]]
    return str(pred["label"]), {k: float(v) for k, v in pred["probs"].items()}, timeline


def model_info(client: EmotionClient) -> dict[str, Any]:
    """The served model as the app talks to it: name, version, labels and window geometry."""
    served = client.model(refresh=True)
    g = served.geometry
    return {
        "name": served.name,
        "version": served.version,
        "url": client.url,
        "labels": list(served.labels),
        "window_seconds": g.window_seconds,
        "hop_seconds": g.hop_seconds,
        "sample_rate": g.sample_rate,
        "video_fps": g.video_fps,
        "face_size": g.face_size,
    }


class OutputFolders:
    """One fresh folder per upload under a private temporary root; only the newest ``keep`` are kept."""

    def __init__(self, keep: int = KEEP_UPLOADS, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="avemo_app_"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._made: deque[Path] = deque()
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.root, True)  # at exit at the latest

    def new(self) -> Path:
        folder = Path(tempfile.mkdtemp(dir=self.root))
        with self._lock:
            self._made.append(folder)
            while len(self._made) > self.keep:
                shutil.rmtree(self._made.popleft(), ignore_errors=True)
        return folder

    def cleanup(self) -> None:
        self._finalizer()


@dataclass
class UploadFiles:
    """What the upload tab shows for one clip."""

    pred: dict  # the prediction, ``clip`` = the uploaded file's name
    video: Path | None  # the annotated clip; None without a video stream
    video_note: str  # why there is no annotated clip ("" when there is one)
    json: Path
    csv: Path


def process_upload(
    client: EmotionClient,
    path: str | Path,
    name: str,
    folder: Path,
    smoothing: str = "none",
    max_side: int | None = PLAYBACK_MAX_SIDE,
) -> UploadFiles:
    """Predict ``path`` (shown as ``name``) and write its annotated clip and timeline files into ``folder``.

    Raises what ``predict_clip`` raises (``MediaError``, ``EmotionClientError``, ``ValueError``)."""
    boxes: list[FaceBox] = []
    pred = named(predict_clip(client, path, smoothing=smoothing, on_face=boxes.append), name)
    stem = Path(name).stem or "clip"
    video: Path | None = None
    note = ""
    if pred.get("modalities", {}).get("video"):
        fps = client.model().geometry.video_fps
        try:
            video = write_annotated(
                path, folder / annotated_name(name), boxes, pred["timeline"], fps, max_side=max_side
            )
        except MediaError as exc:
            note = f"no annotated clip: {exc.reason}"
    else:
        note = "no annotated clip: the file has no video"
    return UploadFiles(
        pred=pred,
        video=video,
        video_note=note,
        json=write_timeline_json([pred], folder / f"{stem}.timeline.json"),
        csv=write_timeline_csv([pred], folder / f"{stem}.timeline.csv"),
    )
