"""A crashed tritonserver comes back by itself: the supervisor restarts it with backoff, logs how it ended,
gives up after too many crashes, and never restarts what it was asked to stop; `avemo serve` uses it.
Then the bounded chaos soak (benchmarks/soak.py): 16 paced streams, the server killed twice, every window
answered exactly once."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from avemo.serving.supervisor import RestartPolicy, describe_exit

# ------------------------------------------------------------------------------ policy


def test_backoff_doubles_per_recent_crash_up_to_the_cap():
    p = RestartPolicy(backoff_s=0.5, max_backoff_s=3.0)
    assert [p.backoff(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="max_crashes"):
        RestartPolicy(max_crashes=0)
    with pytest.raises(ValueError, match="backoff_s"):
        RestartPolicy(backoff_s=5.0, max_backoff_s=1.0)


def test_exit_descriptions_name_the_signal():
    assert describe_exit(-11) == "signal 11 (SIGSEGV)"
    assert describe_exit(-9) == "signal 9 (SIGKILL)"
    assert describe_exit(1) == "exit code 1"


# ------------------------------------------------------------------------------ real Triton


def _served_copy(repo: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(repo, tmp_path / "model_repository"))


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout  # bounds a hang; not a speed claim
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def supervised(triton_runtime, triton_repository, tmp_path):
    from avemo.serving.server import ServerPorts
    from avemo.serving.supervisor import SupervisedServer

    servers, events = [], []

    def make(policy: RestartPolicy):
        srv = SupervisedServer(
            _served_copy(triton_repository, tmp_path),
            ServerPorts.free(),
            log_file=tmp_path / "triton.log",
            restart=policy,
            on_event=events.append,
        )
        servers.append(srv)
        srv.start(timeout=120)
        return srv, events

    yield make
    for srv in servers:
        srv.stop()


@pytest.mark.slow
def test_server_killed_by_sigsegv_and_sigkill_comes_back_and_serves(supervised, served_model_name, geo):
    from avemo.client.grpc_client import EmotionClient

    server, events = supervised(RestartPolicy(backoff_s=0.2, max_backoff_s=0.5))
    audio = np.zeros(geo.window_samples, np.float32)
    frames = np.zeros((geo.frames_per_window, 112, 112, 3), np.uint8)
    for n, sig in enumerate((signal.SIGSEGV, signal.SIGKILL), start=1):
        pid = server.pid
        os.kill(pid, sig)
        _wait(lambda n=n: server.restarts == n and server.is_ready_to_serve(), 120, f"restart {n}")
        assert server.pid != pid
        with EmotionClient(server.url, served_model_name) as client:
            probs, _ = client.infer(audio, frames, np.ones(2, np.float32))
        assert probs.shape == (1, 4)
    crashes = server.crashes
    assert [c.how for c in crashes] == ["signal 11 (SIGSEGV)", "signal 9 (SIGKILL)"]
    assert "Signal (11) received" in crashes[0].log_tail  # the tail of that run's log, not the whole file
    assert all(c.restarted_in_s is not None and c.restarted_in_s > 0 for c in crashes)
    said = "\n".join(events)
    assert "exited unexpectedly: signal 11 (SIGSEGV)" in said and "restarting tritonserver in" in said
    assert len(re.findall(r"tritonserver is back \(pid \d+\)", said)) == 2
    # the killed runs' shared-memory regions were removed; only the live server's remain
    live = list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
    assert len(live) <= 1, live


@pytest.mark.slow
def test_supervisor_gives_up_after_max_crashes_in_the_window(supervised):
    server, events = supervised(RestartPolicy(max_crashes=2, window_s=600, backoff_s=0.1, max_backoff_s=0.1))
    os.kill(server.pid, signal.SIGKILL)
    _wait(lambda: server.restarts == 1 and server.is_ready_to_serve(), 120, "the first restart")
    os.kill(server.pid, signal.SIGKILL)
    _wait(lambda: server.state == "failed", 60, "the supervisor to give up")
    assert "crashed 2 times within 600 s" in server.give_up and server.restarts == 1
    assert not server.is_running() and events[-1].startswith("error: tritonserver crashed 2 times")


@pytest.mark.slow
def test_stop_is_never_taken_for_a_crash(supervised):
    server, events = supervised(RestartPolicy(backoff_s=0.1, max_backoff_s=0.1))
    pid = server.pid
    assert server.stop() == 0  # SIGTERM: Triton drains and exits 0
    time.sleep(1.0)  # give a (wrong) restart the time to happen
    assert server.state == "stopped" and server.restarts == 0 and server.crashes == [] and events == []
    assert not server.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _serve(repo: Path, ports, *extra: str) -> subprocess.Popen:
    avemo = Path(sys.executable).with_name("avemo")
    cmd = [str(avemo), "serve", "--model-repository", str(repo), "--grpc-port", str(ports.grpc)]
    cmd += ["--http-port", str(ports.http), "--metrics-port", str(ports.metrics), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _read_until(proc: subprocess.Popen, pattern: str, lines: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None  # started with stdout=PIPE
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"avemo serve ended before {pattern!r}:\n{''.join(lines)}")
        lines.append(line)
        if re.search(pattern, line):
            return
    raise AssertionError(f"no {pattern!r} within {timeout} s:\n{''.join(lines)}")


def _tritonservers(port: int) -> list[int]:
    """Pids of the tritonserver processes listening on gRPC ``port`` (from /proc: no pgrep needed)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"/tritonserver") and f"--grpc-port={port}".encode() in args:
            pids.append(int(cmdline.parent.name))
    return pids


def _triton_pid(port: int) -> int:
    pids = _tritonservers(port)
    assert len(pids) == 1, pids
    return pids[0]


@pytest.mark.slow
def test_serve_cli_restarts_a_crashed_server_and_stops_cleanly_on_sigterm(triton_runtime, triton_repository, tmp_path):
    from avemo.serving.server import ServerPorts

    ports = ServerPorts.free()
    proc = _serve(_served_copy(triton_repository, tmp_path), ports)
    lines: list[str] = []
    try:
        _read_until(proc, r"^serving; Ctrl-C to stop \(a crashed server is restarted", lines)
        os.kill(_triton_pid(ports.grpc), signal.SIGSEGV)
        _read_until(proc, r"exited unexpectedly: signal 11 \(SIGSEGV\)", lines)
        _read_until(proc, r"tritonserver is back", lines)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines) + out
    assert proc.returncode == 0, text
    assert "stopped (tritonserver exit code 0)" in out and "restarting" not in out  # the stop was not a crash
    assert _tritonservers(ports.grpc) == []


@pytest.mark.slow
def test_serve_cli_no_restart_exits_with_the_crash(triton_runtime, triton_repository, tmp_path):
    from avemo.serving.server import ServerPorts

    ports = ServerPorts.free()
    proc = _serve(_served_copy(triton_repository, tmp_path), ports, "--no-restart")
    lines: list[str] = []
    try:
        _read_until(proc, r"^serving; Ctrl-C to stop \(--no-restart", lines)
        os.kill(_triton_pid(ports.grpc), signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert "error: tritonserver exited unexpectedly (code -9)" in out and "restarting" not in out


# ------------------------------------------------------------------------------ bounded chaos soak


@pytest.mark.slow
def test_bounded_soak_with_two_kills_loses_and_duplicates_no_window(
    triton_runtime, triton_repository, served_model_name, repo_root, tmp_path
):
    spec = importlib.util.spec_from_file_location("avemo_soak_benchmark", repo_root / "benchmarks" / "soak.py")
    soak = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = soak  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(soak)
    events: list[str] = []
    r = soak.run_soak(
        _served_copy(triton_repository, tmp_path),
        16,
        24.0,
        model=served_model_name,
        kill_every=8.0,
        log_file=tmp_path / "soak-triton.log",
        on_event=events.append,
    )
    report = soak.format_report(r)
    assert [k.signal for k in r.kills] == ["SIGSEGV", "SIGKILL"], report
    assert r.crashes == ["signal 11 (SIGSEGV)", "signal 9 (SIGKILL)"] and r.restarts == 2, report
    run = r.run
    assert run.sent >= 16 * 20, report  # about one window per second per stream
    assert run.windows == run.sent and run.lost == 0 and run.duplicated == 0, report
    assert run.errors == 0 and run.shed == 0 and run.reconnects >= 16, report  # every stream reconnected
    assert r.server_alive, report
    assert run.lag_ms.max > 1000, report  # windows waited out the outages, and were answered after them
