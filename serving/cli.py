"""`avemo serve`: run the bundled Triton server on a model repository until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from avemo.contract.endpoint import GRPC_PORT, HOST, HTTP_PORT, METRICS_PORT, MODEL_REPOSITORY
from avemo.serving.supervisor import RestartPolicy

# Where the embedded server cannot run: the same repository served by a Triton server outside this Python.
ELSEWHERE = (
    "Serve the model repository with a Triton server elsewhere and give clients its address (avemo predict|app|"
    "live --url HOST:8001): the Docker image (docker build -t avemo-triton . && docker run --shm-size=1g "
    "-p 8000-8002:8000-8002 avemo-triton, plus --gpus all on an NVIDIA GPU; docs/deploy.md), or avemo serve "
    "--host 0.0.0.0 on a Linux x86_64/aarch64 machine; docs/platforms.md has the steps"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-repository",
        default=Path(MODEL_REPOSITORY),
        type=Path,
        help="written by `avemo export` (default: %(default)s)",
    )
    parser.add_argument(
        "--host", default=HOST, help="address to bind, 0.0.0.0 for all interfaces (default: %(default)s)"
    )
    parser.add_argument("--grpc-port", type=int, default=GRPC_PORT, help="gRPC port (default: %(default)s)")
    parser.add_argument("--http-port", type=int, default=HTTP_PORT, help="HTTP port (default: %(default)s)")
    parser.add_argument(
        "--metrics-port", type=int, default=METRICS_PORT, help="Prometheus metrics port (default: %(default)s)"
    )
    parser.add_argument("--log-file", type=Path, default=None, help="server log (default: a temp file, path printed)")
    parser.add_argument("--verbose", action="store_true", help="verbose Triton logging (--log-verbose=1)")
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait for models to load (default: %(default)s)"
    )
    policy = RestartPolicy()
    parser.add_argument(
        "--no-restart",
        action="store_true",
        help="exit when tritonserver exits unexpectedly instead of restarting it",
    )
    parser.add_argument(
        "--max-crashes",
        type=int,
        default=policy.max_crashes,
        help="give up after this many crashes within --crash-window (default: %(default)s)",
    )
    parser.add_argument(
        "--crash-window",
        type=float,
        default=policy.window_s,
        help="seconds the crashes are counted over (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from avemo.serving.server import ServerPorts, TritonServerError, embedded_server_problem, models_in_repository
    from avemo.serving.supervisor import SupervisedServer

    problem = embedded_server_problem()
    if problem is not None:
        print(f"error: {problem}. {ELSEWHERE}", file=sys.stderr)
        return 2
    repo = Path(args.model_repository)
    if not repo.is_dir() or not models_in_repository(repo):
        print(
            f"error: model repository '{repo}' holds no model (expected <model>/config.pbtxt); "
            "run `avemo export` first",
            file=sys.stderr,
        )
        return 2
    try:
        policy = None if args.no_restart else RestartPolicy(max_crashes=args.max_crashes, window_s=args.crash_window)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def on_event(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    server = SupervisedServer(
        repo,
        ServerPorts(grpc=args.grpc_port, http=args.http_port, metrics=args.metrics_port),
        host=args.host,
        log_file=args.log_file,
        log_verbose=1 if args.verbose else 0,
        restart=policy,
        on_event=on_event,
    )
    server.delete_own_log = False  # the path is printed; keep it for the user
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"starting Triton on {repo.resolve()} ...", flush=True)
        try:
            server.start(timeout=args.timeout)
        except TritonServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for name, version in server.ready_models():
            print(f"  model ready: {name} (version {version})")
        for name, backend in server.skipped_models.items():
            print(f"  model skipped: {name} (backend {backend!r} is not in the embedded server; see docs/deploy.md)")
        print(f"gRPC: {server.url}   HTTP: {server.http_url}   metrics: {server.client_host}:{server.ports.metrics}")
        print(f"log: {server.log_file}")
        if policy is None:
            print("serving; Ctrl-C to stop (--no-restart: a crash ends it)", flush=True)
        else:
            print(
                f"serving; Ctrl-C to stop (a crashed server is restarted; giving up after {policy.max_crashes} "
                f"crashes in {policy.window_s:g} s)",
                flush=True,
            )
        while not stop.wait(0.5):
            if server.state == "failed":
                return 1  # the supervisor said why
            if policy is None and not server.is_running():
                code = server.process.returncode if server.process is not None else None
                print(
                    f"error: tritonserver exited unexpectedly (code {code}); log tail:\n{server.log_tail()}",
                    file=sys.stderr,
                )
                return 1
        print("stopping ...", flush=True)
        code = server.stop()
        print(f"stopped (tritonserver exit code {code})")
        return 0
    finally:
        if server.is_running():
            server.stop()
        for s, h in previous.items():
            signal.signal(s, h)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="avemo serve", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
