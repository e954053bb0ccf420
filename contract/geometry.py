"""Audio/video constants and the window geometry shared by training, export, serving and client.

Like whisper's ``audio.py``: the constants live in one place and derived values are computed.

A *window* is a fixed-length slice of a clip:
    audio  [S]             float32 mono PCM at ``SAMPLE_RATE``, S = window_samples
    frames [F, 112, 112, 3] uint8 RGB face crops at ``VIDEO_FPS``, F = frames_per_window
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

SAMPLE_RATE = 16_000  # Hz, mono float32 in [-1, 1]
VIDEO_FPS = 8  # frames per second sampled from the video stream
FACE_SIZE = 112  # face crops are FACE_SIZE x FACE_SIZE RGB
WINDOW_SECONDS = 2.0  # length of one model input window
HOP_SECONDS = 1.0  # step between consecutive windows

# log-mel front end (computed inside the exported graph)
N_FFT = 400  # 25 ms at 16 kHz
HOP_LENGTH = 160  # 10 ms at 16 kHz
N_MELS = 64


@dataclass(frozen=True)
class WindowGeometry:
    """How a clip is cut into model windows. Stored in checkpoints and in the served config."""

    sample_rate: int = SAMPLE_RATE  # audio samples per second
    video_fps: int = VIDEO_FPS  # video frames per second
    face_size: int = FACE_SIZE  # side of the square RGB face crop
    window_seconds: float = WINDOW_SECONDS  # window length in seconds
    hop_seconds: float = HOP_SECONDS  # hop between windows in seconds

    @property
    def window_samples(self) -> int:
        """S: audio samples per window."""
        return int(round(self.window_seconds * self.sample_rate))

    @property
    def frames_per_window(self) -> int:
        """F: video frames per window."""
        return int(round(self.window_seconds * self.video_fps))

    def window_starts(self, duration_seconds: float) -> list[float]:
        """Start times (s) of the windows covering a clip of the given duration.

        Windows advance by ``hop_seconds``; a clip shorter than one window yields one window
        (zero-padded by the caller); the tail is covered by one last window aligned to the end.
        """
        if duration_seconds <= self.window_seconds:
            return [0.0]
        n = int(math.floor((duration_seconds - self.window_seconds) / self.hop_seconds + 1e-9)) + 1
        starts = [round(i * self.hop_seconds, 6) for i in range(n)]
        last = round(duration_seconds - self.window_seconds, 6)
        if last - starts[-1] > 0.25 * self.hop_seconds:
            starts.append(last)
        return starts

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> WindowGeometry:
        return cls(**{k: type(getattr(cls(), k))(v) for k, v in d.items() if k in cls.__dataclass_fields__})


DEFAULT_GEOMETRY = WindowGeometry()
