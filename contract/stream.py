"""The incremental media pipeline: media in, each window out as soon as its last sample and frame arrived.

    packets (file, device) --decode--> audio frames --resample--> float32 mono at geometry.sample_rate
                                       video frames --sample k/fps--> RGB --FaceTracker--> uint8 crops
    WindowAssembler: buffers a few seconds, cuts windows with ``windows.window_arrays``

The training cache (``media.decode_clip``, ``keep=True``) and the client (``ClipStream``, live sources,
the web app) all run this same code, so a window is the same bytes whether its clip was cached whole,
streamed from a file or captured live. Without ``keep`` the assembler drops what no later window
needs: memory stays at a few windows whatever the clip length.

    for window in ClipStream("clip.mp4", geometry):          # or realtime=True: paced at 1x
        ...                                                    # window.start, .audio [S], .frames [F,112,112,3]
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from avemo.contract.faces import FaceBox, FaceTracker, NoFaceError, crop_method
from avemo.contract.geometry import DEFAULT_GEOMETRY, WindowGeometry
from avemo.contract.windows import DecodedClip, Window, window_arrays

_EPS = 1e-9


class MediaError(Exception):
    """A media file could not be decoded. ``str(e)`` is ``"<path>: <reason>"``."""

    def __init__(self, path, reason: str = ""):
        super().__init__(str(path), reason)  # args kept as (path, reason) so it pickles across processes
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.reason else self.path


def open_media(path, format: str | None = None, options: dict | None = None):
    """A PyAV input container for a file (checked first) or, with ``format``, a device or URL."""
    if format is None:
        p = Path(path)
        if not p.exists():
            raise MediaError(p, "file not found")
        if not p.is_file():
            raise MediaError(p, "not a regular file")
        if p.stat().st_size == 0:
            raise MediaError(p, "empty file (0 bytes)")
    try:
        return av.open(str(path), mode="r", format=format, options=options or {})
    except Exception as e:  # av.FFmpegError, OSError, UnicodeDecodeError, ...
        raise MediaError(path, f"cannot open as audio/video ({type(e).__name__}: {e})") from e


class FrameSampler:
    """Samples a frame stream at a fixed rate: output frame k is the input frame nearest to k/fps.

    Input frames come in presentation order with their time (s); times are taken relative to the first
    frame. ``image`` may be an array or a zero-argument callable returning one (the RGB conversion of a
    decoded frame then runs only for frames that are used).
    """

    def __init__(self, fps: float, step: float | None = None):
        self.fps = float(fps)
        self.step = float(step) if step else 1.0 / self.fps  # input frame duration (s)
        self.k = 0  # next output frame index
        self.count = 0  # input frames seen
        self.t0: float | None = None
        self.last_t = 0.0
        self._prev: tuple[float, np.ndarray] | None = None  # (t, image) of the previous input frame

    @staticmethod
    def _get(image):
        return image() if callable(image) else image

    def push(self, t: float | None, image) -> list[np.ndarray]:
        """Add one input frame; returns the output frames it completes (possibly none)."""
        t = self.count * self.step if t is None else float(t)
        self.count += 1
        if self.t0 is None:
            self.t0 = t
        t -= self.t0
        out, cache = [], {}
        while self.k / self.fps <= t + _EPS:
            target = self.k / self.fps
            use_prev = self._prev is not None and target - self._prev[0] <= t - target  # tie: earlier frame
            src = self._prev[1] if use_prev and self._prev is not None else image
            if id(src) not in cache:
                cache[id(src)] = self._get(src)
            out.append(cache[id(src)])
            self.k += 1
        self._prev = (t, cache.get(id(image), image))
        self.last_t = max(self.last_t, t)
        return out

    @property
    def duration(self) -> float:
        """Video duration so far (s): last frame time + one input frame; 0 before any frame."""
        return self.last_t + self.step if self._prev is not None else 0.0

    def finish(self) -> list[np.ndarray]:
        """End of stream: repeats the last frame up to the video duration."""
        out: list[np.ndarray] = []
        if self._prev is not None:
            last = self._get(self._prev[1])
            while self.k / self.fps < self.duration - 1e-6:
                out.append(last)
                self.k += 1
        return out


class WindowAssembler:
    """Media in (any order of audio and video pushes), windows out as soon as they are complete.

    ``has_audio`` / ``has_video``: whether the source has that stream (a window waits for both).
    ``origin``: ``perf_counter()`` of media time 0 for a source paced in real time; a window's
    ``ready_at`` is then origin + the media time of its last needed sample (its end with audio, its last
    frame without), so lag includes decoding; otherwise the time it was cut.
    ``keep``: keep every sample and crop (``clip()`` returns the whole DecodedClip; the training cache).
    ``on_face``: called with the ``FaceBox`` each sampled frame was cropped from, in frame order (sampled
    frame k is the source frame nearest to media time k / video_fps; annotation draws these boxes).
    """

    def __init__(
        self,
        geometry: WindowGeometry = DEFAULT_GEOMETRY,
        face_crop: str = "auto",
        has_audio: bool = True,
        has_video: bool = True,
        *,
        video_step: float | None = None,
        origin: float | None = None,
        keep: bool = False,
        on_face: Callable[[FaceBox], None] | None = None,
    ):
        self.g, self.keep, self.origin = geometry, keep, origin
        self.on_face = on_face
        self.want_audio, self.want_video = bool(has_audio), bool(has_video)
        self.tracker = FaceTracker(geometry.face_size, face_crop)
        self.sampler = FrameSampler(geometry.video_fps, video_step)
        self._resampler: av.AudioResampler | None = None  # created on the first audio frame
        self._audio = np.zeros(0, np.float32)  # samples [a_off, n_audio) at geometry.sample_rate
        self._chunks: list[np.ndarray] = []  # appended since the last consolidation
        self.a_off = self.n_audio = 0
        self._frames: list[np.ndarray] = []  # crops [f_off, n_frames), uint8 [face, face, 3]
        self.f_off = self.n_frames = 0
        self._next = 0  # index of the next regular window (start = index * hop)
        self._audio_pts = 0  # running pts for push_audio
        self.finished = False
        self.duration = 0.0  # final duration (s), set by finish()

    # ------------------------------------------------------------------------------------ input
    def push_audio_frame(self, frame) -> list[Window]:
        """A PyAV AudioFrame (any rate, layout, format)."""
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.g.sample_rate)
        for f in self._resampler.resample(frame):
            self._add_audio(f.to_ndarray().reshape(-1))
        return self._ready()

    def push_audio(self, pcm, sample_rate: int) -> list[Window]:
        """PCM: float [-1, 1] or int16; [n] mono or [n, channels] (1 or 2) interleaved."""
        pcm = np.asarray(pcm)
        if pcm.ndim not in (1, 2) or (pcm.ndim == 2 and pcm.shape[1] not in (1, 2)):
            raise ValueError(f"audio must be [n] or [n, 1|2] samples, got shape {pcm.shape}")
        channels = 1 if pcm.ndim == 1 else pcm.shape[1]
        if pcm.dtype == np.int16:
            fmt = "s16"
        elif pcm.dtype.kind == "f":
            fmt, pcm = "flt", pcm.astype(np.float32, copy=False)
        else:
            raise ValueError(f"audio samples must be float or int16, got {pcm.dtype}")
        if pcm.size == 0:
            return []
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm.reshape(1, -1)), format=fmt, layout="mono" if channels == 1 else "stereo"
        )
        frame.sample_rate, frame.pts = int(sample_rate), self._audio_pts
        frame.time_base = Fraction(1, int(sample_rate))
        self._audio_pts += pcm.shape[0]
        return self.push_audio_frame(frame)

    def push_video_frame(self, frame) -> list[Window]:
        """A PyAV VideoFrame; its timestamp places it in time, RGB conversion only if it is sampled."""
        return self._add_images(self.sampler.push(frame.time, lambda: frame.to_ndarray(format="rgb24")))

    def push_image(self, t: float | None, rgb: np.ndarray) -> list[Window]:
        """An RGB uint8 [H, W, 3] image at media time ``t`` seconds (None: one step after the previous)."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"image must be uint8 [H, W, 3] RGB, got {rgb.dtype} {rgb.shape}")
        return self._add_images(self.sampler.push(t, rgb))

    def finish(self) -> list[Window]:
        """End of the source: flush, pad the video to its duration, cut the remaining (tail) windows.

        Raises NoFaceError for face_crop "haar" when no face was found in the whole stream."""
        if self.finished:
            return []
        self.finished = True
        if self._resampler is not None:
            for f in self._resampler.resample(None):
                self._add_audio(f.to_ndarray().reshape(-1))
        self._add_images(self.sampler.finish(), ready=False)
        if self.n_frames:
            self.tracker.finish()
        self.duration = self._duration_so_far()
        self._consolidate()
        starts = self.g.window_starts(self.duration)
        out = [self._cut(s, min(s + self.g.window_seconds, max(self.duration, s))) for s in starts[self._next :]]
        self._next = len(starts)
        return out

    # ------------------------------------------------------------------------------------ state
    @property
    def has_audio(self) -> bool:
        return self.n_audio > 0

    @property
    def has_video(self) -> bool:
        return self.n_frames > 0

    @property
    def crop_counts(self) -> dict:
        return dict(self.tracker.counts)

    @property
    def crop_method(self) -> str:
        return crop_method(self.tracker.counts)

    def clip(self, path: str = "") -> DecodedClip:
        """The whole decoded clip (``keep=True`` and after ``finish()`` only)."""
        if not (self.keep and self.finished):
            raise RuntimeError("clip() needs keep=True and finish()")
        size = self.g.face_size
        frames = np.stack(self._frames) if self._frames else np.zeros((0, size, size, 3), np.uint8)
        return DecodedClip(
            path=str(path),
            audio=self._audio,
            frames=frames,
            crop_method=self.crop_method,
            crop_counts=self.crop_counts,
            duration=self.duration,
            has_audio=self.has_audio,
            has_video=self.has_video,
        )

    # ------------------------------------------------------------------------------------ internals
    def _add_audio(self, samples: np.ndarray) -> None:
        if samples.size:
            self._chunks.append(samples.astype(np.float32, copy=False))
            self.n_audio += samples.size

    def _add_images(self, images: list[np.ndarray], ready: bool = True) -> list[Window]:
        for img in images:
            self._frames.append(self.tracker.push(img))
            self.n_frames += 1
            if self.on_face is not None and self.tracker.last_box is not None:
                self.on_face(self.tracker.last_box)
        return self._ready() if ready else []

    def _consolidate(self) -> None:
        if self._chunks:
            self._audio = np.concatenate([self._audio, *self._chunks])
            self._chunks = []

    def _duration_so_far(self) -> float:
        """A lower bound of the final duration: max(audio seconds, video seconds) received so far."""
        return max(self.n_audio / self.g.sample_rate, self.sampler.duration)

    def _ready(self) -> list[Window]:
        g, out = self.g, []
        while not self.finished:
            duration = self._duration_so_far()
            if duration <= g.window_seconds:  # window_starts: the window count is not known yet
                break
            n = int(math.floor((duration - g.window_seconds) / g.hop_seconds + _EPS)) + 1  # as window_starts
            if self._next >= n:
                break
            start = round(self._next * g.hop_seconds, 6)
            if self.want_audio and self.n_audio < int(round(start * g.sample_rate)) + g.window_samples:
                break
            if self.want_video and self.n_frames < int(round(start * g.video_fps)) + g.frames_per_window:
                break
            self._consolidate()
            out.append(self._cut(start, start + g.window_seconds))
            self._next += 1
        if out:
            self._trim()
        return out

    def _cut(self, start: float, end: float) -> Window:
        audio = self._audio if self.n_audio else None
        frames = np.stack(self._frames) if self._frames else None
        a, f = window_arrays(audio, frames, self.g, start, self.a_off, self.f_off)
        mask = np.array([self.has_audio, self.has_video], np.float32)
        ready = time.perf_counter()
        if self.origin is not None:  # when its last needed sample was captured: audio to the end, else the last frame
            last = end if self.has_audio else min(end, start + (self.g.frames_per_window - 1) / self.g.video_fps)
            ready = self.origin + last
        return Window(start=float(start), audio=a, frames=f, mask=mask, ready_at=ready, end=float(end))

    def _trim(self) -> None:
        """Drop samples and crops no later window can use (the next regular start, or an end-aligned tail)."""
        if self.keep:
            return
        g = self.g
        lower = min(self._next * g.hop_seconds, max(0.0, self._duration_so_far() - g.window_seconds))
        a_cut = max(self.a_off, int(math.floor(lower * g.sample_rate)) - 1)
        f_cut = min(max(self.f_off, int(math.floor(lower * g.video_fps)) - 1), max(self.f_off, self.n_frames - 1))
        self._consolidate()
        self._audio = self._audio[a_cut - self.a_off :].copy()
        self.a_off = a_cut
        del self._frames[: f_cut - self.f_off]
        self.f_off = f_cut


def pick_streams(container, audio: bool = True, video: bool = True):
    """(first audio stream or None, first video stream or None, video frame duration in s or None);
    the video decoder is set to use threads."""
    astream = container.streams.audio[0] if audio and container.streams.audio else None
    vstream = container.streams.video[0] if video and container.streams.video else None
    step = None
    if vstream is not None:
        vstream.thread_type = "AUTO"
        rate = vstream.average_rate or vstream.guessed_rate
        step = 1.0 / float(rate) if rate else None
    return astream, vstream, step


def decoded_frames(container, astream, vstream, pace: Pacer | None = None) -> Iterator[tuple[bool, Any]]:
    """(is_audio, decoded PyAV frame) in demux order; with ``pace`` each packet waits until it is due."""
    for packet in container.demux(*[s for s in (astream, vstream) if s is not None]):
        if pace is not None:
            pace.wait(packet)
        is_audio = astream is not None and packet.stream.index == astream.index
        for frame in packet.decode():
            yield is_audio, frame


def _packet_seconds(packet) -> float | None:
    """When a live source could hand this packet over: its decode time plus its duration (all its media captured)."""
    ts = packet.dts if packet.dts is not None else packet.pts
    if ts is None or packet.time_base is None:
        return None
    return float((ts + (packet.duration or 0)) * packet.time_base)


class ClipStream:
    """The windows of one file (or PyAV device/URL with ``format``), yielded as they are complete.

    ``realtime``: packets are released at their timestamps (1x, like a live source) and windows carry
    ``ready_at`` = when their last media sample arrived. After iteration: ``duration``, ``has_audio``,
    ``has_video``, ``crop_method``, ``crop_counts``. Decoding problems raise ``MediaError``.
    ``on_face``: gets the ``FaceBox`` of every sampled video frame (see ``WindowAssembler``).
    """

    def __init__(
        self,
        path,
        geometry: WindowGeometry = DEFAULT_GEOMETRY,
        face_crop: str = "auto",
        *,
        realtime: bool = False,
        keep: bool = False,
        format: str | None = None,
        options: dict | None = None,
        audio: bool = True,
        video: bool = True,
        on_face: Callable[[FaceBox], None] | None = None,
    ):
        self.path, self.geometry, self.face_crop = str(path), geometry, face_crop
        self.on_face = on_face
        self.realtime, self.keep, self.format, self.options = realtime, keep, format, options
        self.use_audio, self.use_video = audio, video
        self.assembler: WindowAssembler | None = None

    def __iter__(self) -> Iterator[Window]:
        container = open_media(self.path, self.format, self.options)
        try:
            with container:
                astream, vstream, step = pick_streams(container, self.use_audio, self.use_video)
                if astream is None and vstream is None:
                    raise MediaError(self.path, "no audio or video stream")
                origin = time.perf_counter() if self.realtime else None
                asm = self.assembler = WindowAssembler(
                    self.geometry,
                    self.face_crop,
                    astream is not None,
                    vstream is not None,
                    video_step=step,
                    origin=origin,
                    keep=self.keep,
                    on_face=self.on_face,
                )
                pace = Pacer(origin, [s for s in (astream, vstream) if s is not None]) if origin is not None else None
                for is_audio, frame in decoded_frames(container, astream, vstream, pace):
                    yield from asm.push_audio_frame(frame) if is_audio else asm.push_video_frame(frame)
                tail = asm.finish()
        except MediaError:
            raise
        except NoFaceError as e:  # face_crop "haar" without a face
            raise MediaError(self.path, str(e)) from e
        except Exception as e:  # truncated / corrupt data inside the stream
            raise MediaError(self.path, f"decoding failed ({type(e).__name__}: {e})") from e
        if not asm.has_audio and not asm.has_video:
            raise MediaError(self.path, "no decodable audio or video data (truncated or corrupt?)")
        yield from tail

    def __getattr__(self, name):  # duration, has_audio, has_video, crop_method, crop_counts after iteration
        if name in ("duration", "has_audio", "has_video", "crop_method", "crop_counts") and self.assembler:
            return getattr(self.assembler, name)
        raise AttributeError(name)


class Pacer:
    """Plays packets at 1x like a live source: sleeps until each packet's media has been captured
    (media time t is released at ``origin + t``; a packet counts at its decode time plus its duration).

    Media time 0 is the earliest stream start (where the assembler's audio and video clocks start);
    packets stamped before it (B-frame decode times, AAC priming) go at once. With ``stop`` (an Event)
    the wait ends early when it is set."""

    def __init__(self, origin: float, streams, speed: float = 1.0, stop: threading.Event | None = None):
        starts = [float(s.start_time * s.time_base) for s in streams if s.start_time is not None and s.time_base]
        self.origin, self.speed, self.t0, self.stop = origin, speed, min(starts, default=None), stop

    def wait(self, packet) -> bool:
        """Sleep until ``packet`` is due; False if ``stop`` was set meanwhile."""
        t = _packet_seconds(packet)
        if t is None:
            return True
        if self.t0 is None:
            self.t0 = t
        due = self.origin + max(0.0, t - self.t0) / self.speed
        while (delay := due - time.perf_counter()) > 0:
            if self.stop is None:
                time.sleep(delay)
            elif self.stop.wait(min(delay, 0.1)):
                return False
        return self.stop is None or not self.stop.is_set()


def decode_only(path, geometry: WindowGeometry = DEFAULT_GEOMETRY) -> dict:
    """Demux + decode + resample + sample frames to RGB, no face crop, no windows (a benchmark baseline).

    Returns {"seconds": wall time, "samples": audio samples at the geometry rate, "frames": sampled frames}."""
    t0 = time.perf_counter()
    samples = frames = 0
    with open_media(path) as container:
        astream, vstream, step = pick_streams(container)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=geometry.sample_rate)
        sampler = FrameSampler(geometry.video_fps, step)
        for is_audio, frame in decoded_frames(container, astream, vstream):
            if is_audio:
                samples += sum(f.samples for f in resampler.resample(frame))
            else:
                frames += len(sampler.push(frame.time, lambda frame=frame: frame.to_ndarray(format="rgb24")))
    return {"seconds": time.perf_counter() - t0, "samples": samples, "frames": frames}
