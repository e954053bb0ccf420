"""Windows: the fixed-length slices of a clip the model sees, and the one primitive that cuts them.

``window_arrays`` is used by the streaming pipeline (on its short buffers, through the offsets), by
``make_windows`` (whole decoded clips) and by the training cache, so windows are cut identically
everywhere. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from avemo.contract.geometry import DEFAULT_GEOMETRY, WindowGeometry


@dataclass
class DecodedClip:
    path: str
    audio: np.ndarray  # float32 [N] mono at geometry.sample_rate; [0] if no audio
    frames: np.ndarray  # uint8 [T, face, face, 3] RGB crops at geometry.video_fps; [0, face, face, 3] if no video
    crop_method: str  # "haar", "center" or "mixed"
    crop_counts: dict = field(default_factory=dict)  # {"haar": n, "center": m} frames per crop kind
    duration: float = 0.0  # seconds, max of audio and video durations
    has_audio: bool = False
    has_video: bool = False


@dataclass
class Window:
    start: float  # seconds from the clip start
    audio: np.ndarray  # float32 [S]
    frames: np.ndarray  # uint8 [F, face, face, 3]
    mask: np.ndarray  # float32 [2]: (audio present, video present)
    ready_at: float | None = None  # time.perf_counter() when the window's last media sample was available
    end: float | None = None  # seconds: where the window's media ends (start + window, or the clip's end)


def window_arrays(
    audio,
    frames,
    geometry: WindowGeometry = DEFAULT_GEOMETRY,
    start: float = 0.0,
    audio_offset: int = 0,
    frame_offset: int = 0,
):
    """Cut one window at ``start`` seconds: (float32 [S], uint8 [F, H, W, 3]).

    audio float32 [N] (may be empty) and frames uint8 [T, H, W, 3] (may be empty / None) are clips at
    geometry rates whose first elements are sample ``audio_offset`` and frame ``frame_offset`` of the
    clip (0 for whole clips; a streaming buffer passes where it starts). Audio past the end is zero;
    frames past the end repeat the last frame given (the clip's last one); a missing modality gives
    zeros (frames then [F, face, face, 3]).
    """
    n_s, n_f = geometry.window_samples, geometry.frames_per_window
    out_a = np.zeros(n_s, np.float32)
    if audio is not None and len(audio):
        a0 = int(round(start * geometry.sample_rate)) - audio_offset
        if a0 < 0:
            raise ValueError(f"window at {start} s starts before the audio buffer (sample {audio_offset})")
        seg = np.asarray(audio, np.float32)[a0 : a0 + n_s]
        out_a[: len(seg)] = seg
    if frames is None or len(frames) == 0:
        return out_a, np.zeros((n_f, geometry.face_size, geometry.face_size, 3), np.uint8)
    f0 = int(round(start * geometry.video_fps)) - frame_offset
    if f0 < 0:
        raise ValueError(f"window at {start} s starts before the frame buffer (frame {frame_offset})")
    seg = frames[f0 : f0 + n_f]
    if len(seg) < n_f:
        seg = np.concatenate([seg, np.repeat(frames[-1:], n_f - len(seg), axis=0)])
    return out_a, np.ascontiguousarray(seg, dtype=np.uint8)


def make_windows(clip: DecodedClip, geometry: WindowGeometry = DEFAULT_GEOMETRY) -> list[Window]:
    """All windows of a clip at ``geometry.window_starts(clip.duration)``, zero-padded, with masks."""
    mask = np.array([clip.has_audio, clip.has_video], np.float32)
    out = []
    for start in geometry.window_starts(clip.duration):
        audio, frames = window_arrays(clip.audio, clip.frames, geometry, start)
        end = min(start + geometry.window_seconds, max(clip.duration, start))
        out.append(Window(start=float(start), audio=audio, frames=frames, mask=mask.copy(), end=float(end)))
    return out
