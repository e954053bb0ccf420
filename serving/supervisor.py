"""A tritonserver that comes back by itself: ``SupervisedServer`` restarts the bundled server when it exits
without being asked to.

The embedded server is Triton 2.51, the newest the nvidia-pytriton wheel bundles, and under many concurrent
gRPC streams it can die with signal 11 in ``TRITONSERVER_InferenceRequestDelete`` (a race between gRPC
request cancellation and request release, Triton issues #7368, #7472, #8034). The clients already resend
every unanswered window after a reconnect; what was missing is a server to reconnect to.

    with SupervisedServer(repo, ports, log_file=log) as server:   # restarts on a crash, gives up after
        ...                                                         # policy.max_crashes in policy.window_s

On an unexpected exit the supervisor (one thread) logs the exit code or signal and the tail of Triton's log
for that run, kills what is left of the process group, removes the run's shared-memory regions, waits a
backoff (``backoff_s`` doubling per crash in the window, capped at ``max_backoff_s``) and starts the server
again on the same ports and repository. While it is down or restarting, ``state`` is ``"restarting"``
and the server answers nothing (readiness probes and clients see it not ready). After ``max_crashes``
crashes within ``window_s`` seconds it gives up: ``state`` becomes ``"failed"`` and ``give_up`` holds the
reason. ``stop()`` (SIGTERM, Ctrl-C in ``avemo serve``) never triggers a restart.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from avemo.serving.server import TritonServer, TritonServerError

log = logging.getLogger(__name__)

STATES = ("stopped", "starting", "ready", "restarting", "failed")


@dataclass(frozen=True)
class RestartPolicy:
    """When and how often a crashed server is started again."""

    max_crashes: int = 5  # crashes within window_s after which the supervisor gives up
    window_s: float = 300.0  # sliding window (s) the crashes are counted in
    backoff_s: float = 1.0  # wait before the first restart; doubles with each crash in the window
    max_backoff_s: float = 30.0  # cap on that wait
    start_timeout_s: float = 180.0  # a restart not ready within this counts as one more crash

    def __post_init__(self) -> None:
        if self.max_crashes < 1:
            raise ValueError(f"max_crashes must be >= 1, got {self.max_crashes}")
        if self.window_s <= 0 or self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError(f"need window_s > 0 and 0 <= backoff_s <= max_backoff_s: {self}")

    def backoff(self, crashes_in_window: int) -> float:
        """Seconds to wait before restarting after the ``crashes_in_window``-th recent crash (1-based)."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** max(0, crashes_in_window - 1))


@dataclass
class Crash:
    """One unexpected exit of tritonserver."""

    at: float  # time.time() when it was noticed
    returncode: int  # negative: killed by that signal
    log_tail: str  # the last lines Triton wrote in that run
    restarted_in_s: float | None = None  # seconds from the crash to ready again; None: not (yet) back

    @property
    def how(self) -> str:
        return describe_exit(self.returncode)


def describe_exit(returncode: int) -> str:
    """``"signal 11 (SIGSEGV)"`` for a negative return code, else ``"exit code N"``."""
    if returncode < 0:
        try:
            return f"signal {-returncode} ({signal.Signals(-returncode).name})"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


@dataclass
class _Counters:
    crashes: list[Crash] = field(default_factory=list)
    restarts: int = 0


class SupervisedServer(TritonServer):
    """``TritonServer`` plus a supervisor thread that restarts it after an unexpected exit (``restart=None``:
    no supervision, the plain server). ``on_event(line)`` receives one line per crash, restart and give-up
    (default: the ``avemo.serving.supervisor`` logger at WARNING)."""

    def __init__(
        self,
        model_repository: Path,
        *args,
        restart: RestartPolicy | None = RestartPolicy(),
        on_event: Callable[[str], None] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(model_repository, *args, **kwargs)
        self.policy = restart
        self.on_event = on_event
        self.state = "stopped"
        self.give_up: str | None = None  # why the supervisor stopped restarting
        self._counts = _Counters()
        self._lifecycle = threading.RLock()  # held while (re)starting, so stop() never races a restart
        self._thread: threading.Thread | None = None
        self._run_log_offset = 0  # where the current run's lines start in the log file
        self._timeout = 180.0

    # ------------------------------------------------------------------ public

    @property
    def crashes(self) -> list[Crash]:
        return list(self._counts.crashes)

    @property
    def restarts(self) -> int:
        """Successful restarts so far."""
        return self._counts.restarts

    def is_ready_to_serve(self) -> bool:
        return self.state == "ready" and self.is_running()

    def start(self, timeout: float = 180) -> None:
        self._timeout = timeout
        self.give_up = None
        self.state = "starting"
        self._run_log_offset = self._log_size()
        try:
            with self._lifecycle:
                super().start(timeout=timeout)
        except BaseException:
            self.state = "failed"
            raise
        self.state = "ready"
        if self.policy is not None and (self._thread is None or not self._thread.is_alive()):
            self._thread = threading.Thread(target=self._supervise, name="avemo-triton-supervisor", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30) -> int | None:
        self._stopping.set()  # first: an exit from here on is ours, never a crash; a restart's wait aborts
        with self._lifecycle:
            code = super().stop(timeout=timeout)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self.state != "failed":
            self.state = "stopped"
        return code

    def wait_ready(self, timeout: float) -> bool:
        """Block until the server is ready (True) or ``timeout`` s pass / the supervisor gave up (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_ready_to_serve():
                return True
            if self.state in ("failed", "stopped"):
                return False
            time.sleep(0.05)
        return self.is_ready_to_serve()

    # ------------------------------------------------------------------ supervisor thread

    def _emit(self, line: str) -> None:
        if self.on_event is None:
            log.warning("%s", line)
        else:
            self.on_event(line)

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size if self.log_file else 0
        except OSError:
            return 0

    def _run_log(self, max_lines: int = 15) -> str:
        """The last lines Triton wrote since the current run started."""
        if not self.log_file or not self.log_file.exists():
            return ""
        with open(self.log_file, "rb") as f:
            f.seek(self._run_log_offset)
            text = f.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-max_lines:])

    def _supervise(self) -> None:
        assert self.policy is not None
        while not self._stopping.is_set():
            proc = self.process
            if proc is None:
                return
            try:
                code = proc.wait(timeout=0.2)
            except Exception:  # noqa: BLE001 - TimeoutExpired: still running
                continue
            if self._stopping.is_set():
                return
            if not self._handle_crash(code):
                return

    def _handle_crash(self, code: int) -> bool:
        """Log the crash, wait the backoff and restart; False when giving up (or stopping)."""
        policy = self.policy
        assert policy is not None
        crash = Crash(at=time.time(), returncode=code, log_tail=self._run_log())
        self._counts.crashes.append(crash)
        self.state = "restarting"
        recent = [c for c in self._counts.crashes if crash.at - c.at <= policy.window_s]
        self._emit(
            f"tritonserver (pid {self.pid}) exited unexpectedly: {crash.how}; crash {len(recent)} of "
            f"{policy.max_crashes} allowed in {policy.window_s:g} s; its log ended with:\n{crash.log_tail}"
        )
        with self._lifecycle:
            if self._stopping.is_set():
                return False
            assert self.process is not None  # it has just exited
            self._kill_stray_stubs(self.process.pid)
            self._remove_shared_memory()
        if len(recent) >= policy.max_crashes:
            return self._fail(
                f"tritonserver crashed {len(recent)} times within {policy.window_s:g} s (last: {crash.how}); "
                f"not restarting it again. Its log: {self.log_file}"
            )
        wait = policy.backoff(len(recent))
        self._emit(f"restarting tritonserver in {wait:.1f} s (restart {self._counts.restarts + 1})")
        if self._stopping.wait(wait):
            return False
        with self._lifecycle:
            if self._stopping.is_set():
                return False
            self._run_log_offset = self._log_size()
            try:
                self._respawn(policy.start_timeout_s)
            except TritonServerError as exc:
                if self._stopping.is_set():
                    return False
                self._emit(f"restart failed: {str(exc).splitlines()[0]}")
                assert self.process is not None  # _respawn spawns one before it can fail
                return self._handle_crash(self.process.returncode if self.process.poll() is not None else -9)
        crash.restarted_in_s = time.time() - crash.at
        self._counts.restarts += 1
        self.state = "ready"
        self._emit(f"tritonserver is back (pid {self.pid}), ready {crash.restarted_in_s:.1f} s after the crash")
        return True

    def _respawn(self, timeout: float) -> None:
        """Start the same command again (same ports, repository and models) and wait until ready."""
        self._spawn(timeout)

    def _fail(self, why: str) -> bool:
        self.give_up = why
        self.state = "failed"
        self._emit(f"error: {why}")
        return False
