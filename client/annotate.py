"""The annotated clip: the clip's own frames with the crop the model saw and the running label drawn on them.

Each frame shows

- the square its face crop was cut from: the tracked face box (solid green, tagged "face"), or the centre
  square the tracker fell back to when it had no face (dashed orange, tagged "centre (no face)");
- a banner with the running label and its probability (the smoothed label, as ``avemo predict`` prints it)
  of the window whose centre is nearest the frame, the frame's time and that window's span, and a bar
  of the probability.

The boxes are not detected again here: they are the ``FaceBox`` es the shared media pipeline
(``avemo.contract.stream``, ``FaceTracker``) reported for the crops it sent to the model
(``predict_clip(..., on_face=boxes.append)``). Sampled frame k (media time k / video_fps) carries box k;
the clip's frame at time t shows box round(t * video_fps).

The output is an MP4 written with PyAV: H.264 (libx264, yuv420p, ``+faststart``: plays in browsers), the
clip's frame rate and frame count, and the clip's audio re-encoded as AAC. OpenCV draws. No torch.

    boxes: list[FaceBox] = []
    pred = predict_clip(client, "clip.mp4", on_face=boxes.append)
    write_annotated("clip.mp4", "clip.annotated.mp4", boxes, pred["timeline"], served.geometry.video_fps)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from avemo.contract.faces import FaceBox
from avemo.contract.stream import MediaError, open_media

FACE_COLOUR = (0, 230, 64)  # RGB: a tracked face box
CENTRE_COLOUR = (255, 140, 0)  # RGB: the centre-square fallback (dashed)
TEXT_COLOUR = (255, 255, 255)
BANNER_ALPHA = 0.6  # darkness of the banner behind the text
READABLE_SIDE = 480  # smaller clips are scaled up to this longest side, so that the text stays readable
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
FONT = cv2.FONT_HERSHEY_SIMPLEX


class RunningLabel:
    """The answered window whose centre is nearest a time (ties: the earlier window)."""

    def __init__(self, timeline: Sequence[dict]) -> None:
        self.rows = sorted((w for w in timeline if w.get("error") is None and w.get("probs")), key=lambda w: w["start"])
        self.centres = np.array([(w["start"] + w["end"]) / 2 for w in self.rows], np.float64)

    def at(self, t: float) -> dict | None:
        if not self.rows:
            return None
        i = int(np.searchsorted(self.centres, t))
        if i == len(self.rows) or (i > 0 and t - self.centres[i - 1] <= self.centres[i] - t):
            i -= 1
        return self.rows[i]


def box_at(boxes: Sequence[FaceBox], t: float, video_fps: float) -> FaceBox | None:
    """The box of the sampled frame nearest media time ``t`` (s from the first frame)."""
    if not boxes:
        return None
    return boxes[min(max(int(round(t * video_fps)), 0), len(boxes) - 1)]


def running_text(row: dict | None) -> tuple[str, float]:
    """(label text, probability) shown for a window row: its smoothed label, or its own without smoothing."""
    if row is None:
        return "no answer", 0.0
    smoothed = row.get("smoothed") or row["probs"]
    label = row.get("smoothed_label") or max(smoothed, key=smoothed.get)
    return label, float(smoothed[label])


def _dashed_rectangle(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, colour, thickness: int) -> None:
    dash = max(4, (x1 - x0) // 12)
    for a, b in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = int(np.hypot(b[0] - a[0], b[1] - a[1]))
        for s in range(0, length, 2 * dash):
            e = min(s + dash, length)
            p = (a[0] + (b[0] - a[0]) * s // max(length, 1), a[1] + (b[1] - a[1]) * s // max(length, 1))
            q = (a[0] + (b[0] - a[0]) * e // max(length, 1), a[1] + (b[1] - a[1]) * e // max(length, 1))
            cv2.line(img, p, q, colour, thickness, cv2.LINE_AA)


def draw_annotations(rgb: np.ndarray, box: FaceBox | None, row: dict | None, t: float) -> np.ndarray:
    """Draw the banner and the crop square on an RGB uint8 [H, W, 3] frame, in place; returns it."""
    h, w = rgb.shape[:2]
    fs = max(0.35, min(h, w) / 420)  # font scale
    ft = 1 if fs < 0.9 else 2  # font thickness
    bt = max(2, int(round(min(h, w) / 160)))  # box line thickness

    label, p = running_text(row)
    line1 = f"{label} {p:.2f}"
    line2 = f"{t:.2f} s" + (f"  window {row['start']:.2f}-{row['end']:.2f} s" if row is not None else "")
    (_, h1), b1 = cv2.getTextSize(line1, FONT, fs * 1.2, ft + 1)
    (_, h2), b2 = cv2.getTextSize(line2, FONT, fs * 0.75, ft)
    pad = max(3, int(round(4 * fs)))
    bar = max(3, int(round(5 * fs)))
    banner = min(h, pad + h1 + b1 + pad + h2 + b2 + pad + bar + pad)
    region = rgb[:banner]
    region[:] = (region.astype(np.float32) * (1.0 - BANNER_ALPHA)).astype(np.uint8)
    y = pad + h1
    cv2.putText(rgb, line1, (pad, y), FONT, fs * 1.2, TEXT_COLOUR, ft + 1, cv2.LINE_AA)
    y += b1 + pad + h2
    cv2.putText(rgb, line2, (pad, y), FONT, fs * 0.75, TEXT_COLOUR, ft, cv2.LINE_AA)
    y += b2 + pad
    if row is not None:
        cv2.rectangle(rgb, (pad, y), (pad + int(round(p * (w - 2 * pad))), y + bar - 1), FACE_COLOUR, -1)

    if box is not None:
        x0, y0, x1, y1 = box.x, box.y, box.x + box.side - 1, box.y + box.side - 1
        face = box.kind == "haar"
        colour = FACE_COLOUR if face else CENTRE_COLOUR
        if face:
            cv2.rectangle(rgb, (x0, y0), (x1, y1), colour, bt, cv2.LINE_AA)
        else:
            _dashed_rectangle(rgb, x0, y0, x1, y1, colour, bt)
        tag = "face" if face else "centre (no face)"
        (tw, th), tb = cv2.getTextSize(tag, FONT, fs * 0.8, ft)
        above = y0 - bt - tb - 1
        ty = above if above - th >= banner else max(y0, banner) + bt + th + 3  # else inside, below the top edge
        tx = x0 + bt + 2
        cv2.rectangle(rgb, (tx - 2, ty - th - 2), (tx + tw + 2, ty + tb), (0, 0, 0), -1)  # readable on any picture
        cv2.putText(rgb, tag, (tx, ty), FONT, fs * 0.8, colour, ft, cv2.LINE_AA)
    return rgb


def _aac_rate(rate: int) -> int:
    return rate if rate in AAC_RATES else 48000


def write_annotated(
    src: str | Path,
    out: str | Path,
    boxes: Sequence[FaceBox],
    timeline: Sequence[dict],
    video_fps: float,
    *,
    min_side: int | None = READABLE_SIDE,
    max_side: int | None = None,
    crf: int = 20,
) -> Path:
    """Write ``src`` to ``out`` (MP4) with its crop squares and running labels drawn (see the module docstring).

    ``boxes``: one ``FaceBox`` per sampled frame (at ``video_fps``, the served geometry's rate) from the
    pipeline that made the crops; ``timeline``: the prediction's window rows. ``min_side`` / ``max_side``: frames
    whose longest side is shorter / longer are scaled up / down to it (None: no limit; both None: the clip's
    size). Raises ``MediaError`` when ``src`` has no video or cannot be decoded. The file appears at ``out``
    only once complete."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.mp4")
    labels = RunningLabel(timeline)
    try:
        with open_media(src) as inp:
            if not inp.streams.video:
                raise MediaError(src, "no video stream: nothing to annotate")
            ivs = inp.streams.video[0]
            ivs.thread_type = "AUTO"
            ias = inp.streams.audio[0] if inp.streams.audio else None
            rate = Fraction(ivs.average_rate or ivs.guessed_rate or 25).limit_denominator(100000)
            with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as dst:
                sides = (min_side, max_side)
                _transcode(inp, dst, ivs, ias, rate, boxes, labels, video_fps, sides, crf)
        os.replace(tmp, out)
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or corrupt data inside the clip
        raise MediaError(src, f"annotating failed ({type(e).__name__}: {e})") from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def _scale(h: int, w: int, sides: tuple[int | None, int | None]) -> float:
    """The factor that brings the longest side within (min_side, max_side)."""
    lo, hi = sides
    long = max(h, w)
    scale = lo / long if lo and long < lo else 1.0
    return hi / long if hi and long * scale > hi else scale


class _AudioOut:
    """The clip's audio re-encoded as AAC into ``dst`` (timestamps counted in samples from 0)."""

    def __init__(self, dst: av.container.OutputContainer, ias: av.audio.stream.AudioStream) -> None:
        src_rate = int(ias.codec_context.sample_rate or ias.rate or 48000)
        layout = "mono" if (ias.codec_context.channels or 1) == 1 else "stereo"
        self.rate = _aac_rate(src_rate)
        self.dst = dst
        self.stream = dst.add_stream("aac", rate=self.rate, layout=layout)
        self.stream.bit_rate = 128_000
        self.resampler = av.AudioResampler(format="fltp", layout=layout, rate=self.rate)
        self.samples = 0

    def encode(self, frame: av.AudioFrame | None) -> None:
        for f in self.resampler.resample(frame):
            f.pts, f.time_base = self.samples, Fraction(1, self.rate)
            self.samples += f.samples
            self.dst.mux(self.stream.encode(f))

    def close(self) -> None:
        self.encode(None)
        self.dst.mux(self.stream.encode(None))


def _transcode(
    inp: av.container.InputContainer,
    dst: av.container.OutputContainer,
    ivs: av.video.stream.VideoStream,
    ias: av.audio.stream.AudioStream | None,
    rate: Fraction,
    boxes: Sequence[FaceBox],
    labels: RunningLabel,
    video_fps: float,
    sides: tuple[int | None, int | None],
    crf: int,
) -> None:
    """Decode ``inp`` in demux order, draw on the video frames, encode both streams into ``dst``."""
    ovs: av.video.stream.VideoStream | None = None
    audio: _AudioOut | None = None
    pending_audio: list[av.AudioFrame] = []  # audio decoded before the first video frame (streams start on it)
    t0: float | None = None
    last_pts, i = -1, 0
    for packet in inp.demux(*[s for s in (ivs, ias) if s is not None]):
        for frame in packet.decode():
            if isinstance(frame, av.AudioFrame):
                if ovs is None:
                    pending_audio.append(frame)
                elif audio is not None:
                    audio.encode(frame)
                continue
            if not isinstance(frame, av.VideoFrame):
                continue
            t = float(frame.time) if frame.time is not None else i / float(rate)
            t0 = t if t0 is None else t0
            rel = t - t0
            rgb: np.ndarray = frame.to_ndarray(format="rgb24")
            box = box_at(boxes, rel, video_fps)
            h, w = rgb.shape[:2]
            scale = _scale(h, w, sides)
            if scale != 1.0:
                size = (int(round(w * scale)), int(round(h * scale)))
                rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
                if box is not None:
                    x, y, side = (int(round(v * scale)) for v in (box.x, box.y, box.side))
                    box = FaceBox(x, y, side, box.kind)
            draw_annotations(rgb, box, labels.at(rel), rel)
            h, w = rgb.shape[:2]
            if h % 2 or w % 2:  # yuv420p needs even sides: repeat the last row / column
                rgb = cv2.copyMakeBorder(rgb, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
            if ovs is None:
                ovs = dst.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": "veryfast"})
                ovs.width, ovs.height, ovs.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
                if ias is not None:
                    audio = _AudioOut(dst, ias)
                    for a in pending_audio:
                        audio.encode(a)
                pending_audio.clear()
            if rgb.shape[:2] != (ovs.height, ovs.width):  # a stream that changes size mid-way: keep the first
                rgb = cv2.resize(rgb, (ovs.width, ovs.height), interpolation=cv2.INTER_AREA)
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, dtype=np.uint8), format="rgb24")
            last_pts = max(last_pts + 1, int(round(rel * rate)))
            vf.pts, vf.time_base = last_pts, 1 / rate
            dst.mux(ovs.encode(vf))
            i += 1
    if ovs is None:
        raise MediaError(inp.name, "no decodable video frames: nothing to annotate")
    dst.mux(ovs.encode(None))
    if audio is not None:
        audio.close()


def annotated_name(clip: str | Path) -> str:
    """``<stem>.annotated.mp4``: the file name ``avemo predict --annotate FOLDER`` writes for a clip."""
    return f"{Path(clip).stem}.annotated.mp4"
