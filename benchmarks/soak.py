"""Chaos soak: K paced streams for M minutes against the embedded (supervised) Triton, killing it on a timer.

    python benchmarks/soak.py [--model-repository model_repository] [--streams 32] [--minutes 5]
                              [--kill-every 30] [--signals SIGSEGV,SIGKILL] [--lag-budget S] [--json-out F]

Starts ``SupervisedServer`` on the repository (what ``avemo serve`` runs: a crashed tritonserver is
restarted with backoff), then runs ``client.loadgen.run_streams``: ``--streams`` bidirectional gRPC streams,
each sending one window per hop of the served geometry as a live camera + microphone would, through the
client's real streaming path (reconnect and resend on a transport failure, busy answers retried). With
``--kill-every N`` a killer thread sends ``tritonserver`` the next of ``--signals`` every N seconds: SIGSEGV
is what the gRPC cancellation race of Triton 2.51 ends in, SIGKILL leaves no chance to clean up.

Printed (and written as JSON with ``--json-out``): windows sent, answered, lost (never answered, refused
nor shed), duplicated (answered twice), refused, shed and late (with ``--lag-budget``: live semantics),
busy answers, stream reconnects, server kills, crashes seen and restarts made by the supervisor, and the
lag (window due -> answer) p50 / p95 / max. Without a lag budget every window must be answered: a window
that waited for the restart is late by the outage, not lost.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from avemo.client.loadgen import StreamsResult, run_streams
from avemo.contract.endpoint import MODEL_NAME, MODEL_REPOSITORY
from avemo.serving.server import ServerPorts
from avemo.serving.supervisor import RestartPolicy, SupervisedServer

DEFAULT_SIGNALS = ("SIGSEGV", "SIGKILL")


@dataclass
class Kill:
    at_s: float  # seconds after the streams started
    signal: str
    pid: int


@dataclass
class SoakResult:
    streams: int
    seconds: float
    kill_every_s: float | None
    kills: list[Kill] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)  # how each exit the supervisor saw ended
    restarts: int = 0
    restart_s: list[float] = field(default_factory=list)  # crash -> ready again, per restart
    server_alive: bool = False  # serving at the end of the run
    run: StreamsResult | None = None
    wall_s: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["run"] = self.run.to_dict() if self.run else None
        return d


def run_soak(
    repository: Path,
    streams: int,
    seconds: float,
    *,
    model: str = MODEL_NAME,
    kill_every: float | None = None,
    signals: tuple[str, ...] = DEFAULT_SIGNALS,
    lag_budget: float | None = None,
    log_file: Path | None = None,
    on_event=None,
) -> SoakResult:
    """One soak (see the module docstring); ``on_event(line)`` hears the supervisor and the killer."""
    say = on_event or (lambda line: None)
    kills_planned = int(seconds // kill_every) if kill_every else 0
    # the supervisor must outlast the planned kills: give up only on crashes beyond them
    policy = RestartPolicy(max_crashes=kills_planned + 3, window_s=max(300.0, seconds * 2))
    server = SupervisedServer(
        Path(repository), ServerPorts.free(), log_file=log_file, restart=policy, on_event=lambda s: say(f"[server] {s}")
    )
    result = SoakResult(streams=streams, seconds=seconds, kill_every_s=kill_every)
    stop = threading.Event()
    t0 = [time.perf_counter()]

    def killer() -> None:
        assert kill_every is not None  # started only with kill_every
        k = 0
        while not stop.wait(max(0.0, t0[0] + (k + 1) * kill_every - time.perf_counter())):
            if time.perf_counter() - t0[0] >= seconds:
                return
            if not server.wait_ready(60):  # never kill a server that is still coming back
                return
            sig = signals[k % len(signals)]
            pid = server.pid
            assert pid is not None  # the server is up
            os.kill(pid, getattr(signal, sig))
            result.kills.append(Kill(round(time.perf_counter() - t0[0], 2), sig, pid))
            say(f"[killer] {sig} -> tritonserver pid {pid} at {result.kills[-1].at_s:.1f} s")
            k += 1

    wall0 = time.perf_counter()
    server.start()
    thread = threading.Thread(target=killer, name="soak-killer", daemon=True)
    try:
        t0[0] = time.perf_counter()
        if kill_every:
            thread.start()
        result.run = run_streams(
            server.url, model, streams, seconds, lag_budget=lag_budget, reconnect_timeout=120.0, on_event=None
        )
        stop.set()
        if thread.is_alive():
            thread.join(timeout=70)
        result.server_alive = server.wait_ready(30)
    finally:
        stop.set()
        result.crashes = [c.how for c in server.crashes]
        result.restarts = server.restarts
        result.restart_s = [round(c.restarted_in_s, 2) for c in server.crashes if c.restarted_in_s is not None]
        server.stop()
        result.wall_s = time.perf_counter() - wall0
    return result


def format_report(r: SoakResult) -> str:
    run = r.run
    lines = [f"soak: {r.streams} paced streams x {r.seconds:g} s, wall {r.wall_s:.1f} s"]
    if r.kill_every_s:
        kills = ", ".join(f"{k.signal} at {k.at_s:.0f} s" for k in r.kills) or "none"
        lines.append(f"  kills (every {r.kill_every_s:g} s): {kills}")
    restarts = ", ".join(f"{s:.1f} s" for s in r.restart_s) or "-"
    lines.append(
        f"  crashes seen {len(r.crashes)}, restarts {r.restarts} (back after {restarts}); alive: {r.server_alive}"
    )
    if run is not None:
        refused = run.errors
        lines.append(
            f"  windows: sent {run.sent}, answered {run.windows}, lost {run.lost}, duplicated {run.duplicated}, "
            f"refused/failed {refused}, shed {run.shed}, late {run.late}, busy answers {run.busy}, "
            f"reconnects {run.reconnects}"
        )
        if run.lag_ms is not None:
            lag = run.lag_ms
            lines.append(f"  lag ms (due -> answer): p50 {lag.p50:.0f}  p95 {lag.p95:.0f}  max {lag.max:.0f}")
        for m in run.error_messages:
            lines.append(f"  error: {m}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=Path(MODEL_REPOSITORY))
    parser.add_argument("--model", default=MODEL_NAME, help="clip model to stream to (default: %(default)s)")
    parser.add_argument("--streams", type=int, default=32, help="paced streams (default: %(default)s)")
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the run (default: %(default)s)")
    parser.add_argument("--kill-every", type=float, default=None, help="kill tritonserver every N s (default: never)")
    parser.add_argument(
        "--signals",
        default=",".join(DEFAULT_SIGNALS),
        help="signals the kills cycle through (default: %(default)s)",
    )
    parser.add_argument("--lag-budget", type=float, default=None, help="live semantics: shed windows later than S s")
    parser.add_argument("--log-file", type=Path, default=None, help="Triton's log (default: a temp file)")
    parser.add_argument("--json-out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    signals = tuple(s.strip().upper() for s in args.signals.split(",") if s.strip())
    bad = [s for s in signals if not hasattr(signal, s)]
    if bad or not signals:
        parser.error(f"--signals: unknown signal(s) {bad or args.signals!r}; e.g. SIGSEGV,SIGKILL")
    if args.streams < 1 or args.minutes <= 0:
        parser.error("--streams must be >= 1 and --minutes > 0")
    log_file = args.log_file or Path(tempfile.mkstemp(prefix="avemo-soak-triton-", suffix=".log")[1])
    print(f"[soak] Triton log: {log_file}", file=sys.stderr)

    def on_event(line: str) -> None:
        print(f"[soak {time.strftime('%H:%M:%S')}] {line.splitlines()[0]}", file=sys.stderr, flush=True)

    r = run_soak(
        args.model_repository,
        args.streams,
        args.minutes * 60.0,
        model=args.model,
        kill_every=args.kill_every,
        signals=signals,
        lag_budget=args.lag_budget,
        log_file=log_file,
        on_event=on_event,
    )
    print(format_report(r))
    if args.json_out:
        args.json_out.write_text(json.dumps(r.to_dict(), indent=2))
        print(f"[soak] JSON: {args.json_out}", file=sys.stderr)
    ok = r.run is not None and r.run.lost == 0 and r.run.duplicated == 0 and r.server_alive
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
