"""Live sources for `avemo live`: capture devices (or any PyAV input) decoded into one WindowAssembler.

Default devices per platform (``default_sources``), opening with a readable reason per failure
(``open_source``, ``open_first``, ``no_device_message``) and ``Capture``: one thread per container
pushing decoded frames into ONE ``contract.stream.WindowAssembler`` under a lock; a source that is not
a capture device (a file, ``lavfi``) is paced to 1x by its timestamps. See ``client/live.py``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import queue
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from avemo.contract.stream import Pacer, WindowAssembler

# libavdevice capture formats: these deliver media in real time by themselves (never paced);
# anything else (files, lavfi generators, network files) is paced to 1x by its timestamps
CAPTURE_FORMATS = frozenset(
    {
        "v4l2",
        "video4linux2",
        "alsa",
        "pulse",
        "jack",
        "oss",
        "sndio",
        "openal",
        "avfoundation",
        "dshow",
        "vfwcap",
        "gdigrab",
        "x11grab",
        "kmsgrab",
        "fbdev",
        "android_camera",
    }
)
OPEN_TIMEOUT = 10.0  # seconds to open a source
READ_TIMEOUT = 10.0  # seconds without data from an opened source before it counts as failed
EXIT_NO_DEVICE = 2


@dataclass(frozen=True)
class SourceSpec:
    """One input to try: a device / URL / file, its PyAV format (None: probe), and options."""

    kind: str  # "video" or "audio"
    url: str
    format: str | None = None
    options: dict = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.url} ({self.format})" if self.format else self.url


@dataclass
class OpenedSource:
    spec: SourceSpec
    container: Any  # av.container.InputContainer
    stream: Any  # its first video / audio stream
    paced: bool  # played at 1x by the capture thread (not a capture device)

    def describe(self) -> str:
        s = self.stream
        if self.spec.kind == "video":
            rate = s.average_rate or s.guessed_rate or s.base_rate
            detail = f"{s.codec_context.width}x{s.codec_context.height}" + (f" {float(rate):.4g} fps" if rate else "")
        else:
            detail = f"{s.codec_context.sample_rate} Hz, {s.codec_context.layout.nb_channels} ch"
        return f"{self.spec.describe()}: {detail}" + (", played at 1x" if self.paced else "")


# ------------------------------------------------------------------------------------ device table


def default_sources(kind: str, platform: str | None = None) -> tuple[list[SourceSpec], str]:
    """The devices tried when ``--video`` / ``--audio`` is not given, and a hint for when none opens."""
    platform = platform or sys.platform
    if platform.startswith("linux"):
        if kind == "video":
            devices = sorted(glob.glob("/dev/video[0-9]*"), key=lambda p: (len(p), p)) or ["/dev/video0"]
            return [SourceSpec("video", d, "v4l2") for d in devices], (
                "pass another camera with --video /dev/videoN (format v4l2), a file, or --no-video"
            )
        return [SourceSpec("audio", "default", "alsa"), SourceSpec("audio", "default", "pulse")], (
            "pass another microphone with --audio hw:CARD,DEV --audio-format alsa "
            "(list them with `arecord -l`), a file, or --no-audio"
        )
    if platform == "darwin":
        if kind == "video":
            return [SourceSpec("video", "0", "avfoundation", {"framerate": "30"})], (
                "pass another camera with --video N --video-format avfoundation "
                "(list them with `ffmpeg -f avfoundation -list_devices true -i ''`), a file, or --no-video"
            )
        return [SourceSpec("audio", ":0", "avfoundation")], (
            "pass another microphone with --audio :N --audio-format avfoundation, a file, or --no-audio"
        )
    if platform.startswith("win"):
        flag, prefix = ("--video", "video") if kind == "video" else ("--audio", "audio")
        return [], (
            f"DirectShow needs the device's name: list them with `ffmpeg -list_devices true -f dshow -i dummy`, "
            f'then pass {flag} "{prefix}=NAME" {flag}-format dshow (or a file, or --no-{kind})'
        )
    return [], f"no default {kind} device is known for platform {platform!r}: pass {'--' + kind} DEV"


def parse_options(items: list[str] | None, flag: str) -> dict:
    from avemo.contract.options import UsageError

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} takes KEY=VALUE (got {item!r})")
        out[key] = value
    return out


# ------------------------------------------------------------------------------------ opening


@contextlib.contextmanager
def _captured_stderr(lines: list[str]):
    """Collect what C libraries print straight to fd 2 (ALSA's "Unknown PCM default") into ``lines``."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters)
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", errors="replace")
            lines.extend(s.strip() for s in text.splitlines() if s.strip())


def _reason(exc: BaseException, noise: list[str]) -> str:
    strerror = getattr(exc, "strerror", None)
    reason = strerror if isinstance(strerror, str) and strerror else (str(exc) or type(exc).__name__)
    if reason.startswith("no container format"):
        reason = f"format {reason.split('format', 1)[1].strip()} is not built into this PyAV/FFmpeg"
    if noise:  # ALSA / driver words, e.g. "Unknown PCM default"
        last = noise[-1].rsplit(")", 1)[-1].strip() if ")" in noise[-1] else noise[-1]
        reason += f" ({last})"
    return reason


def open_source(spec: SourceSpec, timeout: float = OPEN_TIMEOUT) -> OpenedSource:
    """Open ``spec`` with PyAV and pick its first stream of ``spec.kind``; raises ``OSError`` with a reason."""
    import av

    noise: list[str] = []
    container = None
    try:
        with _captured_stderr(noise):
            container = av.open(
                spec.url, mode="r", format=spec.format, options=dict(spec.options), timeout=(timeout, READ_TIMEOUT)
            )
    except Exception as exc:  # av.FFmpegError (FileNotFoundError, OSError, ...), ValueError (unknown format)
        raise OSError(_reason(exc, noise)) from exc
    streams = container.streams.video if spec.kind == "video" else container.streams.audio
    if not streams:
        others = [s.type for s in container.streams]
        container.close()
        raise OSError(f"no {spec.kind} stream" + (f" (it has {', '.join(others)})" if others else ""))
    stream = streams[0]
    if spec.kind == "video":  # slice threads only: frame threads would hold frames back (latency)
        assert isinstance(stream, av.VideoStream)
        stream.thread_type = "SLICE"
    fmt_names = set((container.format.name or "").split(",")) | {spec.format or ""}
    return OpenedSource(spec, container, stream, paced=not (fmt_names & CAPTURE_FORMATS))


@dataclass
class Attempt:
    spec: SourceSpec
    error: str | None  # None: opened


def open_first(candidates: list[SourceSpec], timeout: float = OPEN_TIMEOUT) -> tuple[OpenedSource | None, list]:
    """The first candidate that opens, and every attempt (spec, error) up to it."""
    attempts = []
    for spec in candidates:
        try:
            source = open_source(spec, timeout)
        except OSError as exc:
            attempts.append(Attempt(spec, str(exc)))
            continue
        attempts.append(Attempt(spec, None))
        return source, attempts
    return None, attempts


def no_device_message(failed: dict[str, tuple[list, str]]) -> str:
    """The message for kinds with no usable device: every device tried, why it failed, what to pass."""
    lines = []
    for kind, (attempts, hint) in failed.items():
        lines.append(f"error: no {kind} source could be opened; tried:")
        for a in attempts:
            lines.append(f"  {a.spec.describe()}: {a.error}")
        if not attempts:
            lines.append("  (no default device on this platform)")
        lines.append(f"  -> {hint}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ capture


class Capture:
    """Capture threads (one per opened container) feeding one assembler; windows come out of ``windows()``.

    A paced source (a file) releases each packet through ``contract.stream.Pacer`` (when its media has
    been captured on the wall clock since the capture started), as a live device would deliver it.
    A window's ``ready_at`` is when the packet carrying the frame that completed it arrived (was read
    from a device, or released by the pacer). Its lag thus covers decoding (decoder delay included), face crop,
    waiting for the other source and inference. ``seconds`` stops each source at that much media;
    ``stop()`` ends the threads early (Ctrl-C). Frames are pushed into the one assembler under a lock;
    the windows it cuts are queued for ``windows()``.
    """

    def __init__(self, sources: list[OpenedSource], geometry, face_crop: str = "auto", seconds: float | None = None):
        self.sources = sources
        self.geometry, self.face_crop = geometry, face_crop
        self.seconds = seconds
        self.assembler: WindowAssembler | None = None  # made by start()
        self.lock = threading.Lock()  # one assembler, several threads
        self.stop_event = threading.Event()
        self.queue: queue.Queue = queue.Queue()
        self.errors: list[str] = []
        self.media_seconds = {s.spec.kind: 0.0 for s in sources}
        self.t_start: float | None = None
        self.reached_seconds = False  # a source stopped at ``seconds``
        self._threads: list[threading.Thread] = []
        self._remaining = len(sources)
        self._finished = False

    def start(self) -> None:
        video = next((s for s in self.sources if s.spec.kind == "video"), None)
        step = self._video_step(video) if video is not None else None
        self.t_start = time.perf_counter()
        # no origin: _run sets each window's ready_at to the arrival of the frame that completed it
        self.assembler = WindowAssembler(
            self.geometry,
            self.face_crop,
            has_audio=any(s.spec.kind == "audio" for s in self.sources),
            has_video=video is not None,
            video_step=step,
        )
        for src in self.sources:
            t = threading.Thread(target=self._run, args=(src,), name=f"avemo-live-{src.spec.kind}", daemon=True)
            self._threads.append(t)
            t.start()

    @staticmethod
    def _video_step(src: OpenedSource) -> float | None:
        rate = src.stream.average_rate or src.stream.guessed_rate
        return 1.0 / float(rate) if rate else None

    @property
    def duration(self) -> float:
        """Seconds of media read: the assembler's final duration once finished, else the longest source's."""
        if self.assembler is not None and self.assembler.finished:
            return float(self.assembler.duration)
        return max(self.media_seconds.values(), default=0.0)

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float = 5.0) -> None:
        for t in self._threads:
            t.join(timeout)

    def _emit(self, windows) -> None:
        for w in windows:
            self.queue.put(w)

    def _run(self, src: OpenedSource) -> None:
        kind = src.spec.kind
        assert self.assembler is not None and self.t_start is not None  # start() set them
        push = self.assembler.push_video_frame if kind == "video" else self.assembler.push_audio_frame
        step = self._video_step(src) if kind == "video" else None
        t0 = None
        arrivals: dict = {}  # packet pts -> its arrival: a decoder may output a frame packets later
        pacer = Pacer(self.t_start, [src.stream], stop=self.stop_event) if src.paced else None
        try:
            for packet in src.container.demux(src.stream):
                if (pacer is not None and not pacer.wait(packet)) or self.stop_event.is_set():
                    return
                arrived = time.perf_counter()  # read from the device, or released by the pacer
                if packet.pts is not None:
                    arrivals[packet.pts] = arrived
                    if len(arrivals) > 512:  # packets that gave no frame
                        for key in sorted(arrivals)[:256]:
                            del arrivals[key]
                for frame in packet.decode():
                    t = frame.time if frame.time is not None else (t0 or 0.0) + self.media_seconds[kind]
                    t0 = t if t0 is None else t0
                    if self.seconds is not None and t - t0 >= self.seconds:
                        self.reached_seconds = True
                        return
                    with self.lock:
                        windows = push(frame)
                    span = frame.samples / frame.sample_rate if kind == "audio" else (step or 0.0)
                    self.media_seconds[kind] = max(self.media_seconds[kind], t - t0 + span)
                    ready = arrivals.pop(frame.pts, arrived)  # when the packet carrying this frame arrived
                    for w in windows:  # completed by this frame: the window's last media arrived with it
                        w.ready_at = ready
                    self._emit(windows)
        except Exception as exc:  # noqa: BLE001 - a source that fails mid-run ends; the others go on
            self.errors.append(f"{kind} source {src.spec.describe()} stopped: {type(exc).__name__}: {exc}")
        finally:
            self._source_done()

    def _source_done(self) -> None:
        with self.lock:
            self._remaining -= 1
            last = self._remaining == 0
            windows = []
            if last and not self._finished:
                self._finished = True
                if not self.stop_event.is_set():
                    try:
                        assert self.assembler is not None
                        windows = self.assembler.finish()
                    except ValueError as exc:  # face_crop "haar" and no face in the whole stream
                        self.errors.append(str(exc))
        if last:
            self._emit(windows)
            self.queue.put(None)

    def windows(self):
        """The assembled windows in order, as they become ready; ends when every source has ended."""
        while True:
            try:
                w = self.queue.get(timeout=0.2)
            except queue.Empty:
                if self.stop_event.is_set() and not any(t.is_alive() for t in self._threads):
                    return
                continue
            if w is None:
                return
            yield w

    def close(self) -> None:
        """Stop the threads and close the containers (one still blocked in a read is left to exit)."""
        self.stop()
        self.join()
        running = {src.spec.kind for src, t in zip(self.sources, self._threads) if t.is_alive()}
        for src in self.sources:
            if src.spec.kind in running:  # closing a container under a reading thread could crash it
                continue
            try:
                src.container.close()
            except Exception:
                pass


# ------------------------------------------------------------------------------------ display
