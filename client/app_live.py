"""The live tab's server side: webcam frames and microphone chunks -> windows -> Triton -> running label.

One ``LiveSession`` per browser session (keyed by Gradio's session hash). The browser streams webcam
snapshots and microphone chunks as two Gradio stream events; both feed the session's
``avemo.contract.stream.WindowAssembler`` (face crop, resampling, windowing: the same code as files), and
every window it completes is sent to Triton at once. The media clock: a video frame is stamped with its
arrival time since the session's first chunk; audio is timed by its sample count, padded with silence
at the start when the microphone starts after the camera.

Lag (``lag_ms`` of a result): from the moment the chunk that completed the window reached the handler
(``Window.ready_at``) to the moment Triton's answer is back, i.e. assembly + face crop + gRPC round trip.
What the browser adds (chunk buffering: up to ``stream_every``; upload; delivering the update) is
measured in docs/streaming.md (live-tab lag).

Overload: a window whose media is already older than ``lag_budget`` s when it is ready to send, or that the
server answers busy (its queue is full), is dropped and counted (``shed``), not queued: by the time a retry
came back the picture would be stale. An answer that arrives after the budget is counted ``late``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from avemo.client.grpc_client import EmotionClient, ServerBusy
from avemo.client.smoothing import make_smoother
from avemo.contract.endpoint import LAG_BUDGET_S

MODALITY_CHOICES = {"audio + video": (True, True), "video only": (False, True), "audio only": (True, False)}
MAX_SESSIONS = 16  # live sessions kept at once (oldest dropped): each holds an assembler and its buffers
KEEP_RESULTS = 240  # windows kept per session for the plot and the lag figures


def to_mono_float(pcm) -> np.ndarray:
    """Microphone samples (int16 or float; [n] or [n, channels]) -> float32 mono in [-1, 1]."""
    pcm = np.asarray(pcm)
    if pcm.dtype.kind in "iu":
        pcm = pcm.astype(np.float32) / float(np.iinfo(pcm.dtype).max + 1)
    pcm = pcm.astype(np.float32, copy=False)
    return pcm.mean(axis=1) if pcm.ndim == 2 else pcm.reshape(-1)


@dataclass
class LiveSession:
    """Per-browser-session state of the live tab."""

    client: EmotionClient
    smooth: str = "none"  # avemo.client.smoothing spec: none, ema:A, median:K
    modalities: str = "audio + video"
    labels: list[str] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)
    frames_in: int = 0
    audio_seconds: float = 0.0
    error: str | None = None
    version: int = 0  # bumped on every new result (the plot timer redraws only when it changed)
    lag_budget: float | None = LAG_BUDGET_S  # s; a window later than this is dropped, not queued
    shed: int = 0  # windows dropped: over the lag budget before sending, or the server was busy
    late: int = 0  # windows answered after the lag budget

    def __post_init__(self) -> None:
        from avemo.contract.stream import WindowAssembler

        served = self.client.model()
        self.labels = list(served.labels)
        self.geometry = served.geometry
        has_audio, has_video = MODALITY_CHOICES[self.modalities]
        self.has_audio, self.has_video = has_audio, has_video
        self.assembler = WindowAssembler(served.geometry, has_audio=has_audio, has_video=has_video)
        self.smoother = make_smoother(self.smooth)
        self._lock = threading.Lock()  # the assembler and the counters (two stream events feed one session)
        self._infer_lock = threading.Lock()  # windows go to Triton in order
        self._t0: float | None = None
        self._audio_started = False

    # --------------------------------------------------------------------------------- media in

    def _clock(self, now: float) -> float:
        if self._t0 is None:
            self._t0 = now
        return now - self._t0

    def push_image(self, rgb: np.ndarray, now: float | None = None) -> list[dict]:
        """One webcam snapshot (uint8 [H, W, 3]); returns the results of the windows it completed."""
        if not self.has_video or rgb is None:
            return []
        now = time.perf_counter() if now is None else now
        with self._lock:
            t = self._clock(now)
            self.frames_in += 1
            windows = self.assembler.push_image(t, np.ascontiguousarray(rgb[..., :3], dtype=np.uint8))
        return self._infer(windows)

    def push_audio(self, sample_rate: int, pcm: np.ndarray, now: float | None = None) -> list[dict]:
        """One microphone chunk (int16 or float, [n] or [n, channels]); returns the results of completed windows."""
        if not self.has_audio or pcm is None or len(pcm) == 0:
            return []
        now = time.perf_counter() if now is None else now
        pcm = to_mono_float(pcm)  # one sample format for every push (the assembler's resampler is set up once)
        windows = []
        with self._lock:
            chunk_seconds = len(pcm) / float(sample_rate)
            if not self._audio_started:
                self._audio_started = True
                gap = self._clock(now) - chunk_seconds  # the camera ran before the microphone started
                if gap > 0.05:
                    windows += self.assembler.push_audio(np.zeros(int(gap * sample_rate), np.float32), sample_rate)
                    self.audio_seconds += gap
            else:
                self._clock(now)
            windows += self.assembler.push_audio(pcm, int(sample_rate))
            self.audio_seconds += chunk_seconds
        return self._infer(windows)

    # ---------------------------------------------------------------------------------- Triton

    def _infer(self, windows) -> list[dict]:
        out: list[dict] = []
        if not windows:
            return out
        with self._infer_lock:
            for w in windows:
                t_send = time.perf_counter()
                ready = getattr(w, "ready_at", None)
                if self.lag_budget is not None and ready is not None and t_send - ready > self.lag_budget:
                    self.shed += 1  # already too late to be worth a request
                    continue
                try:
                    probs, weights = self.client.infer(w.audio, w.frames, w.mask, retry_busy=False)
                except ServerBusy:
                    self.shed += 1
                    continue
                t_back = time.perf_counter()
                self.late += self.lag_budget is not None and ready is not None and t_back - ready > self.lag_budget
                p = np.asarray(probs[0], np.float64)
                smoothed = np.asarray(self.smoother.update(p), np.float64)
                k = int(np.argmax(smoothed))
                result = {
                    "start": float(w.start),
                    "end": float(w.start) + self.geometry.window_seconds,
                    "label": self.labels[k],
                    "prob": float(smoothed[k]),
                    "probs": {lab: float(v) for lab, v in zip(self.labels, p)},
                    "smoothed": {lab: float(v) for lab, v in zip(self.labels, smoothed)},
                    "modality_weights": {"audio": float(weights[0][0]), "video": float(weights[0][1])},
                    "latency_ms": (t_back - t_send) * 1000.0,
                    "lag_ms": (t_back - ready) * 1000.0 if ready is not None else None,
                    "done_wall": time.time(),
                }
                out.append(result)
            with self._lock:
                self.results.extend(out)
                del self.results[:-KEEP_RESULTS]
                self.version += 1
        return out

    # ---------------------------------------------------------------------------------- views

    def latest(self) -> dict | None:
        with self._lock:
            return self.results[-1] if self.results else None

    def lag_stats(self) -> dict[str, float] | None:
        with self._lock:
            lags = [r["lag_ms"] for r in self.results if r.get("lag_ms") is not None]
        if not lags:
            return None
        return {"p50": float(np.percentile(lags, 50)), "p95": float(np.percentile(lags, 95)), "n": len(lags)}

    def status_markdown(self) -> str:
        r = self.latest()
        recv = f"received {self.frames_in} frames, {self.audio_seconds:.1f} s audio"
        waiting = []
        if self.has_video and self.frames_in == 0:
            waiting.append("camera (press the webcam's record button)")
        if self.has_audio and self.audio_seconds == 0:
            waiting.append("microphone (press Record)")
        if r is None:
            hint = f"waiting for {' and '.join(waiting)}" if waiting else "collecting the first window"
            return f"{hint[0].upper()}{hint[1:]} · {recv}"
        lag = self.lag_stats()
        lag_txt = f" · lag p50 {lag['p50']:.0f} ms, p95 {lag['p95']:.0f} ms over {lag['n']} windows" if lag else ""
        if self.shed or self.late:
            lag_txt += f" · {self.shed} dropped, {self.late} late (lag budget {self.lag_budget or 0:g} s)"
        mw = r["modality_weights"]
        return (
            f"**{r['label']}** ({r['prob']:.2f}) at {r['end']:.1f} s · window {len(self.results)} · "
            f"weights audio {mw['audio']:.2f} / video {mw['video']:.2f} · "
            f"last lag {r['lag_ms'] or 0:.0f} ms (Triton round trip {r['latency_ms']:.0f} ms){lag_txt} · {recv}"
        )


class LiveSessions:
    """Live sessions by Gradio session hash (bounded; the oldest is dropped)."""

    def __init__(self, client_factory, smooth: str = "none", limit: int = MAX_SESSIONS) -> None:
        self.client_factory = client_factory
        self.smooth = smooth
        self.limit = limit
        self._sessions: OrderedDict[str, LiveSession] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, modalities: str, create: bool = True) -> LiveSession | None:
        with self._lock:
            s = self._sessions.get(key)
            if s is not None and s.modalities == modalities:
                self._sessions.move_to_end(key)
                return s
            if not create:
                return s
            s = LiveSession(self.client_factory(), smooth=self.smooth, modalities=modalities)
            self._sessions[key] = s
            while len(self._sessions) > self.limit:
                self._sessions.popitem(last=False)
            return s

    def drop(self, key: str) -> None:
        with self._lock:
            self._sessions.pop(key, None)

    def __len__(self) -> int:
        return len(self._sessions)
