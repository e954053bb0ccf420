"""The annotated clip (``avemo.client.annotate``) and the timeline files (``avemo.client.timeline_files``), without
a server: the boxes come from the shared media pipeline (``ClipStream(on_face=...)``), the timeline is made up.

The annotated MP4 must decode with PyAV, keep the clip's frame count, rate and audio, and show the crop square
where the tracker put it: solid for a face box, dashed for the centre fallback."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import av
import cv2
import numpy as np
import pytest

from avemo.client.annotate import (
    CENTRE_COLOUR,
    FACE_COLOUR,
    RunningLabel,
    box_at,
    running_text,
    write_annotated,
)
from avemo.client.cli import annotate_targets
from avemo.client.timeline_files import csv_columns, read_timeline_csv, write_timeline_csv, write_timeline_json
from avemo.contract.faces import FaceBox
from avemo.contract.media import MediaError
from avemo.contract.options import UsageError
from avemo.contract.stream import ClipStream

LABELS = ["neutral", "happy", "sad", "angry"]


def _timeline(windows) -> list[dict]:
    """Made-up answers: window i says LABELS[i % 4] with 0.7."""
    rows = []
    for i, w in enumerate(windows):
        probs = {lab: 0.7 if k == i % 4 else 0.1 for k, lab in enumerate(LABELS)}
        rows.append(
            {
                "index": i,
                "start": w.start,
                "end": w.end,
                "error": None,
                "label": LABELS[i % 4],
                "prob": 0.7,
                "probs": probs,
                "smoothed": probs,
                "smoothed_label": LABELS[i % 4],
                "modality_weights": {"audio": 0.4, "video": 0.6},
                "latency_ms": 5.0 + i,
            }
        )
    return rows


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory) -> Path:
    """A generated corpus face (happy, 128 px scaled to 256) off-centre on a 480 x 352 grey canvas: the tracker
    finds it."""
    from avemo.training.synthetic.corpus import render_clip, write_mp4

    audio, faces = render_clip(3, 2, 1, 1, 1, 0)
    frames = np.full((len(faces), 352, 480, 3), 90, np.uint8)
    for canvas, face in zip(frames, faces):
        canvas[48:304, 180:436] = cv2.resize(face, (256, 256), interpolation=cv2.INTER_LINEAR)
    path = tmp_path_factory.mktemp("annotate") / "face.mp4"
    write_mp4(path, audio, frames)
    return path


@pytest.fixture(scope="module")
def faceless_clip(tmp_path_factory) -> Path:
    """A 448 x 256 clip of moving colour bands and a tone: no face, the tracker falls back to the centre square."""
    from avemo.training.synthetic.corpus import write_mp4

    fps, n = 12, 30
    x = np.arange(448) // 2
    frames = np.stack(
        [np.repeat(((x[None, :, None] * (1, 2, 3) + 9 * i) % 200 + 30).astype(np.uint8), 256, axis=0) for i in range(n)]
    )
    sr = 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * np.arange(n * sr // fps) / sr)).astype(np.float32)
    path = tmp_path_factory.mktemp("annotate") / "faceless.mp4"
    write_mp4(path, audio, frames, audio_rate=sr, fps=fps)
    return path


def _decode(path: Path) -> tuple[list[np.ndarray], list[float], dict]:
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        info = {
            "rate": vs.average_rate,
            "codec": vs.codec_context.name,
            "pix_fmt": vs.codec_context.pix_fmt,
            "audio": c.streams.audio[0].codec_context.name if c.streams.audio else None,
            "size": (vs.codec_context.height, vs.codec_context.width),
        }
        frames, times = [], []
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24").astype(np.int16))
            times.append(float(f.time))
    return frames, times, info


def _edge_and_inside(ann: np.ndarray, raw: np.ndarray, box: FaceBox) -> dict[str, Any]:
    """How the annotated frame differs from the raw one along the box's left edge, just outside it, inside it."""
    diff = np.abs(ann - raw).max(axis=2)
    y_lo, y_hi = box.y + box.side // 2, box.y + box.side - 8  # below the banner and the tag
    edge = diff[y_lo:y_hi, box.x : box.x + 2]
    out = diff[y_lo:y_hi, max(box.x - 8, 0) : max(box.x - 5, 0)] if box.x >= 8 else None
    inside = diff[y_lo:y_hi, box.x + 8 : box.x + box.side - 8]
    line = ann[y_lo:y_hi, box.x : box.x + 2][edge > 60]
    return {
        "edge_drawn": float((edge > 60).any(axis=1).mean()),  # share of the edge's rows that carry the line
        "outside": float(out.mean()) if out is not None else 0.0,
        "inside": float(inside.mean()),
        "edge_colour": line.mean(axis=0) if len(line) else np.zeros(3),
    }


@pytest.mark.parametrize("which", ["face", "centre"])
def test_annotated_clip_draws_the_trackers_boxes(which, face_clip, faceless_clip, geo, tmp_path):
    src = face_clip if which == "face" else faceless_clip
    boxes: list[FaceBox] = []
    windows = list(ClipStream(src, geo, on_face=boxes.append))  # the pipeline that makes the model's crops
    kinds = [b.kind for b in boxes]
    if which == "face":  # the cascade may miss the face in a frame or two (the centre square is drawn there)
        assert kinds.count("haar") > 0.8 * len(kinds), kinds
    else:
        assert set(kinds) == {"center"}
    out = tmp_path / "out" / "annotated.mp4"
    write_annotated(src, out, boxes, _timeline(windows), geo.video_fps, min_side=None)  # at the clip's size

    raw, raw_t, raw_info = _decode(src)
    ann, ann_t, info = _decode(out)
    assert len(ann) == len(raw) and info["rate"] == raw_info["rate"] and info["size"] == raw_info["size"]
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p" and info["audio"] == "aac"
    assert ann_t == pytest.approx([t - raw_t[0] for t in raw_t], abs=1e-3)

    for i in range(0, len(raw), 5):
        box = box_at(boxes, raw_t[i] - raw_t[0], geo.video_fps)
        assert box is not None
        m = _edge_and_inside(ann[i], raw[i], box)
        assert m["inside"] < 10 and m["outside"] < 10, (i, box, m)  # the picture itself is untouched (codec noise)
        if box.kind == "haar":
            assert m["edge_drawn"] > 0.95, (i, box, m)  # a solid line on the tracker's box
            assert np.abs(m["edge_colour"] - np.array(FACE_COLOUR)).max() < 50, (i, m)  # green
        else:
            assert 0.25 < m["edge_drawn"] < 0.8, (i, box, m)  # dashes
            assert np.abs(m["edge_colour"] - np.array(CENTRE_COLOUR)).max() < 50, (i, m)  # orange
        shifted = FaceBox(box.x + 12, box.y, box.side - 12, box.kind)  # where the tracker did NOT put it
        assert _edge_and_inside(ann[i], raw[i], shifted)["edge_drawn"] < 0.1
    if which == "face":
        face = next(b for b in boxes if b.kind == "haar")
        assert face.x > 150 and face.side < 352  # the face, not the frame's centre square
    else:
        assert boxes[0] == FaceBox(96, 0, 256, "center")
    if os.environ.get("AVEMO_DOCS_ANNOTATED"):  # how docs/annotated_frame.png (+ _centre.png) are made
        docs = Path(os.environ["AVEMO_DOCS_ANNOTATED"])
        docs = docs if which == "face" else docs.with_name(f"{docs.stem}_centre{docs.suffix}")
        frame = ann[int(np.argmin(np.abs(np.asarray(ann_t) - 1.0)))].astype(np.uint8)  # at 1.0 s
        cv2.imwrite(str(docs), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))


def test_the_box_is_the_crop_the_model_saw(face_clip, faceless_clip):
    """FaceTracker.last_box is exactly the square its crop was resized from (face box and centre fallback)."""
    from avemo.contract.faces import FaceTracker
    from avemo.contract.media import decode_video_frames

    for clip in (face_clip, faceless_clip):
        frames, _ = decode_video_frames(clip, fps=8)
        tracker = FaceTracker(112)
        for frame in frames[:6]:
            crop = tracker.push(frame)
            b = tracker.last_box
            assert b is not None
            square = frame[b.y : b.y + b.side, b.x : b.x + b.side]
            np.testing.assert_array_equal(crop, cv2.resize(square, (112, 112), interpolation=cv2.INTER_AREA))


def test_annotated_size_limits(faceless_clip, geo, tmp_path):
    """Small clips are scaled up to 480 px (readable text), ``max_side`` scales down (the app's playback)."""
    boxes: list[FaceBox] = []
    windows = list(ClipStream(faceless_clip, geo, on_face=boxes.append))
    for kwargs, size in (({}, (274, 480)), ({"max_side": 224}, (128, 224))):
        out = write_annotated(
            faceless_clip, tmp_path / f"{size[1]}.mp4", boxes, _timeline(windows), geo.video_fps, **kwargs
        )
        frames, _, info = _decode(out)
        assert info["size"] == size and len(frames) == 30, kwargs


def test_annotating_needs_video(tmp_path, geo):
    import wave

    wav = tmp_path / "tone.wav"
    with wave.open(str(wav), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes((np.sin(np.arange(16000) / 5) * 8000).astype(np.int16).tobytes())
    with pytest.raises(MediaError, match="no video stream"):
        write_annotated(wav, tmp_path / "out.mp4", [], [], geo.video_fps)
    assert not (tmp_path / "out.mp4").exists()


def test_running_label_and_box_lookup():
    rows: list[dict[str, Any]] = [
        {"start": 0.0, "end": 1.0, "error": None, "probs": {"a": 0.9, "b": 0.1}, "label": "a"},
        {"start": 0.5, "end": 1.5, "error": "refused", "probs": None},
        {"start": 1.0, "end": 2.0, "error": None, "probs": {"a": 0.2, "b": 0.8}, "label": "b"},
    ]
    run = RunningLabel(rows)
    labels = [(row or {}).get("label") for row in map(run.at, (0.0, 1.0, 1.01, 9.0))]
    assert labels == ["a", "a", "b", "b"]  # at 1.0 the centres 0.5 and 1.5 tie: the earlier window
    assert running_text(run.at(0.2)) == ("a", 0.9) and running_text(None) == ("no answer", 0.0)
    assert RunningLabel([rows[1]]).at(1.0) is None
    boxes = [FaceBox(i, 0, 10, "haar") for i in range(4)]
    assert [box_at(boxes, t, 8) for t in (0.0, 0.06, 0.07, 0.2, 5.0)] == [boxes[i] for i in (0, 0, 1, 2, 3)]
    assert box_at([], 1.0, 8) is None


def _pred(clip: str = "a.mp4") -> dict:
    return {
        "clip": clip,
        "label": "happy",
        "probs": {"neutral": 0.2, "happy": 0.5, "sad": 0.2, "angry": 0.1},
        "timeline": _timeline([SimpleNamespace(start=0.0, end=1.0), SimpleNamespace(start=0.5, end=1.5)])
        + [{"index": 2, "start": 1.0, "end": 1.8, "error": "bad shape", "latency_ms": 1.5}],
    }


def test_timeline_csv_and_json_content(tmp_path):
    preds = [_pred("a.mp4"), _pred("b.mp4")]
    path = write_timeline_csv(preds, tmp_path / "t.csv")
    with path.open() as f:
        header = next(csv.reader(f))
    assert header == csv_columns(LABELS) and header[-4:] == ["p_neutral", "p_happy", "p_sad", "p_angry"]
    rows = read_timeline_csv(path)
    assert [(r["clip"], r["window"]) for r in rows] == [(c, str(i)) for c in ("a.mp4", "b.mp4") for i in range(3)]
    first = rows[0]
    assert (first["start"], first["end"], first["label"], first["prob"]) == ("0.0", "1.0", "neutral", "0.7")
    assert (first["smoothed_label"], first["smoothed_prob"], first["audio_weight"], first["video_weight"]) == (
        "neutral",
        "0.7",
        "0.4",
        "0.6",
    )
    assert [first[f"p_{lab}"] for lab in LABELS] == ["0.7", "0.1", "0.1", "0.1"] and first["error"] == ""
    assert rows[1]["label"] == "happy" and rows[1]["latency_ms"] == "6.0"
    refused = rows[2]
    assert refused["error"] == "bad shape" and refused["label"] == "" and refused["p_happy"] == ""

    back = json.loads(write_timeline_json(preds, tmp_path / "t.json").read_text())
    assert back == preds  # the list `avemo predict --json` prints


def test_annotate_targets(tmp_path):
    assert annotate_targets(None, ["a.mp4", "b.mp4"]) == [None, None]
    assert annotate_targets(str(tmp_path / "x.mp4"), ["a.mp4"]) == [tmp_path / "x.mp4"]
    with pytest.raises(UsageError, match="one file for 2 clips"):
        annotate_targets(str(tmp_path / "x.mp4"), ["a.mp4", "b.mp4"])
    assert annotate_targets(str(tmp_path), ["d/a.mp4", "b.wav"]) == [
        tmp_path / "a.annotated.mp4",
        tmp_path / "b.annotated.mp4",
    ]
    assert annotate_targets(str(tmp_path / "new") + "/", ["a.mp4"]) == [tmp_path / "new" / "a.annotated.mp4"]
    with pytest.raises(UsageError, match="a.annotated.mp4"):
        annotate_targets(str(tmp_path), ["x/a.mp4", "y/a.mp4"])
