"""Media decoding shared by the training cache and the streaming client (numpy, PyAV, OpenCV only).

Whole-clip entry points, all built on the one incremental pipeline in ``contract.stream``::

    decode_clip(path)      -> DecodedClip: float32 [N] mono at geometry.sample_rate
                                           + uint8 [T, 112, 112, 3] RGB face crops at geometry.video_fps
    make_windows(clip)     -> [Window(start, audio [S], frames [F,112,112,3], mask [2])]
    ClipStream(path)       -> the same windows, each yielded as soon as it is complete (bounded memory)

``decode_clip`` is ``ClipStream(..., keep=True)`` run to the end, so the windows the training cache
cuts from a decoded clip are exactly those a streamed file or a live source produces.

Every decoding failure (missing file, not a media file, no streams, truncated data) raises
``MediaError`` naming the file and the reason, never a raw PyAV exception.
"""

from __future__ import annotations

import numpy as np

from avemo.contract.faces import FACE_CROP_METHODS, crop_faces, crop_method
from avemo.contract.geometry import DEFAULT_GEOMETRY, WindowGeometry
from avemo.contract.stream import ClipStream, FrameSampler, MediaError, open_media, pick_streams
from avemo.contract.windows import DecodedClip, Window, make_windows, window_arrays

__all__ = [
    "FACE_CROP_METHODS",
    "ClipStream",
    "DecodedClip",
    "MediaError",
    "Window",
    "crop_faces",
    "crop_method",
    "decode_audio",
    "decode_clip",
    "decode_video_frames",
    "make_windows",
    "window_arrays",
]


def decode_clip(path, geometry: WindowGeometry = DEFAULT_GEOMETRY, face_crop: str = "auto") -> DecodedClip:
    """Decode a .mp4/.wav into 16 kHz mono audio and 8 fps 112x112 RGB face crops (see DecodedClip)."""
    if face_crop not in FACE_CROP_METHODS:
        raise ValueError(f"face_crop must be one of {FACE_CROP_METHODS}, got {face_crop!r}")
    stream = ClipStream(path, geometry, face_crop, keep=True)
    for _ in stream:
        pass
    assert stream.assembler is not None  # set when iteration starts
    return stream.assembler.clip(str(path))


def decode_audio(path, sample_rate: int = DEFAULT_GEOMETRY.sample_rate) -> np.ndarray:
    """Mono float32 [N] PCM in [-1, 1] at ``sample_rate`` (.wav, .mp4, ...); [0] if no audio stream."""
    geometry = WindowGeometry(sample_rate=sample_rate)
    stream = ClipStream(path, geometry, "center", keep=True, video=False)
    try:
        for _ in stream:
            pass
    except MediaError as e:
        if e.reason != "no audio or video stream":
            raise
        return np.zeros(0, np.float32)
    assert stream.assembler is not None  # set when iteration starts
    return stream.assembler.clip(str(path)).audio


def decode_video_frames(path, fps: float = DEFAULT_GEOMETRY.video_fps) -> tuple[np.ndarray, float]:
    """RGB uint8 [T, H, W, 3] sampled at a fixed ``fps`` by timestamp, and the video duration (s).

    Frame k is the source frame nearest to time k/fps (source fps does not matter; frames are
    repeated or skipped as needed), T = ceil(duration * fps). No video stream -> ([0,0,0,3], 0.0).
    """
    frames: list[np.ndarray] = []
    with open_media(path) as container:
        _, vstream, step = pick_streams(container, audio=False)
        if vstream is None:
            return np.zeros((0, 0, 0, 3), np.uint8), 0.0
        sampler = FrameSampler(fps, step)
        try:
            for frame in container.decode(vstream):
                frames.extend(sampler.push(frame.time, lambda frame=frame: frame.to_ndarray(format="rgb24")))
        except Exception as e:
            raise MediaError(path, f"decoding failed ({type(e).__name__}: {e})") from e
        frames.extend(sampler.finish())
    if not frames:
        raise MediaError(path, "no decodable video data (truncated or corrupt?)")
    return np.stack(frames), sampler.duration
