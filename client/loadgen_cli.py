"""`avemo loadgen`: closed-loop runs at several concurrencies, then concurrent streams, against a running
Triton (``avemo.client.loadgen`` does the work); a progress line per run on stderr, then a table or JSON.

    avemo loadgen --url 127.0.0.1:8001 --concurrency 1,4,8,16 --duration 10 --streams 16 --stream-duration 60

Exit status: 0 when every run had 0 errors, 1 otherwise, 2 when the served model cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys

from avemo.client.loadgen import (
    PACES,
    ConcurrencyResult,
    Latency,
    StreamsResult,
    make_windows,
    run_concurrency,
    run_streams,
)
from avemo.contract.endpoint import CLIENT_TIMEOUT, GRPC_URL, MODEL_NAME

# ------------------------------------------------------------------------------------------ report


def _ms(lat: Latency | None, attr: str) -> str:
    return "-" if lat is None else f"{getattr(lat, attr):.1f}"


def format_table(results: list) -> str:
    """Markdown table of ``ConcurrencyResult`` / ``StreamsResult`` rows, with the server's split per request."""
    lines = [
        "| run | answered | errors | p50 ms | p95 ms | p99 ms | windows/s | server queue / in / infer / out us "
        "| mean batch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if isinstance(r, ConcurrencyResult):
            name, n = f"{r.model} c={r.concurrency}{' shm' if r.shared_memory else ''}", r.requests
        else:
            name, n = f"{r.model} {r.streams} streams ({r.pace})", r.windows
        s = r.server
        split = (
            "-"
            if s is None
            else (f"{s.queue_us:.0f} / {s.compute_input_us:.0f} / {s.compute_infer_us:.0f} / {s.compute_output_us:.0f}")
        )
        lat = r.latency_ms
        batch = "-" if s is None else f"{s.mean_batch:.2f}"
        lines.append(
            f"| {name} | {n} | {r.errors} | {_ms(lat, 'p50')} | {_ms(lat, 'p95')} | {_ms(lat, 'p99')} "
            f"| {r.throughput:.1f} | {split} | {batch} |"
        )
    return "\n".join(lines)


def summary_line(r) -> str:
    """One progress line for a finished run."""
    lat = r.latency_ms
    n = r.requests if isinstance(r, ConcurrencyResult) else r.windows
    text = f"{n} answered, {r.errors} errors, p50 {_ms(lat, 'p50')} ms, p95 {_ms(lat, 'p95')} ms, "
    text += f"{r.throughput:.1f} windows/s"
    if isinstance(r, StreamsResult) and r.lag_ms is not None:
        text += f", lag p95 {r.lag_ms.p95:.1f} ms"
    return text + (f"; first error: {r.error_messages[0]}" if r.error_messages else "")


# ------------------------------------------------------------------------------------------ CLI


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"concurrency levels must be >= 0, got {text!r}")
    return [v for v in values if v > 0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=GRPC_URL, help="Triton gRPC address (default: %(default)s)")
    parser.add_argument("--model", default=MODEL_NAME, help="served model name (default: %(default)s)")
    parser.add_argument(
        "--timeout", type=float, default=CLIENT_TIMEOUT, help="deadline of each request in s (default: %(default)s)"
    )
    parser.add_argument(
        "--concurrency",
        type=_int_list,
        default=[1, 4, 8, 16],
        metavar="N,N,...",
        help="closed-loop runs: this many workers each (0 = none; default: 1,4,8,16)",
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds of each closed-loop run (default: %(default)s)"
    )
    parser.add_argument("--shm", action="store_true", help="closed-loop runs pass tensors through system shared memory")
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams (0 = none; default: %(default)s)")
    parser.add_argument("--stream-duration", type=float, help="seconds of the stream run (default: --duration)")
    parser.add_argument(
        "--pace",
        choices=PACES,
        default="realtime",
        help="streams send a window every hop (realtime) or as soon as the last is answered (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON only")


def run(args: argparse.Namespace) -> int:
    """Exit status 0 when every run had 0 errors, 1 otherwise, 2 when the model cannot be read."""
    from avemo.client.grpc_client import EmotionClient, EmotionClientError

    with EmotionClient(args.url, args.model, timeout=args.timeout) as client:
        try:
            served = client.model()
        except EmotionClientError as exc:
            print(f"error: {exc}\n(is the server running? start it with `avemo serve`)", file=sys.stderr)
            return 2
    g = served.geometry
    head = (
        f"model {served.name} v{served.version} at {args.url}: windows {g.window_seconds:g} s "
        f"({g.window_samples} samples, {g.frames_per_window} frames), hop {g.hop_seconds:g} s, "
        f"max batch {served.max_batch_size}"
    )
    print(head, file=sys.stderr)
    windows = make_windows(served)
    results: list = []
    for c in args.concurrency:
        print(f"[loadgen] c={c}{' shm' if args.shm else ''}: {args.duration:g} s ...", file=sys.stderr, flush=True)
        r = run_concurrency(
            args.url, args.model, c, args.duration, shared_memory=args.shm, windows=windows, timeout=args.timeout
        )
        print(f"[loadgen]   {summary_line(r)}", file=sys.stderr, flush=True)
        results.append(r)
    if args.streams > 0:
        seconds = args.stream_duration if args.stream_duration is not None else args.duration
        print(f"[loadgen] {args.streams} streams ({args.pace}): {seconds:g} s ...", file=sys.stderr, flush=True)
        streams = run_streams(args.url, args.model, args.streams, seconds, pace=args.pace, timeout=args.timeout)
        print(f"[loadgen]   {summary_line(streams)}", file=sys.stderr, flush=True)
        results.append(streams)
    if args.json:
        print(json.dumps({"model": served.name, "version": served.version, "runs": [r.to_dict() for r in results]}))
    else:
        print(head + "\n\n" + format_table(results))
        print("\nlatency: send -> answer, measured by this process; server: average us per request from Triton's stats")
    return 1 if any(r.errors for r in results) else 0
