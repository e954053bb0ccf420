"""`avemo live`: a webcam and a microphone (or any PyAV-openable source) through the served model.

Sources are PyAV inputs (libavdevice, no extra dependency): by default the platform's camera and
microphone (Linux: ``/dev/video*`` through ``v4l2`` and ``default`` through ``alsa`` / ``pulse``; macOS:
``avfoundation`` "0" and ":0"; Windows: ``dshow`` needs the device's name), overridable with
``--video DEV --video-format FMT --audio DEV --audio-format FMT``. Any URL or file PyAV can open works
too; a source that is not a capture device (a file, ``lavfi``) is played at 1x, like a live source,
which is how the command is tested without a camera:

    avemo live                                              # default camera + microphone
    avemo live --video /dev/video2 --audio hw:1 --audio-format alsa
    avemo live --video clip.mp4 --audio clip.mp4            # a file, played in real time
    avemo live --video testsrc2=size=640x480:rate=30 --video-format lavfi --no-audio

One capture thread per container pushes decoded frames into ONE ``WindowAssembler`` (under a lock);
the windows it cuts are streamed over one gRPC stream (``EmotionClient.stream_iter``) as they are
ready; each answer prints one line: the running (smoothed) label, the window's own label, modality
weights and the lag from the window's last media sample to the answer. The run ends on Ctrl-C,
after ``--seconds`` of media, or at the end of a file, with a summary (``--json``, ``--plot``).
With no usable device the command exits 2 and lists every device it tried and why it failed.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from avemo.client.live_sources import (
    EXIT_NO_DEVICE,
    Capture,
    OpenedSource,
    SourceSpec,
    default_sources,
    no_device_message,
    open_first,
    parse_options,
)
from avemo.client.options import add_client_options, add_lag_budget_option


def _bar(p: float, width: int = 10) -> str:
    n = int(round(max(0.0, min(1.0, p)) * width))
    return "#" * n + "." * (width - n)


def format_window(w: dict) -> str:
    """One live line: time span, running (smoothed) label, the window's own label, weights, lag."""
    span = f"{w['start']:.2f}-{w['end']:.2f} s"
    if w.get("shed"):
        return f"  {span:>16}  dropped ({w['error'][len('shed: ') :]})"
    if w["error"] is not None:
        return f"  {span:>16}  refused by the server: {w['error']}"
    p = w["smoothed"][w["smoothed_label"]]
    mw = w["modality_weights"]
    timing = f"lag {w['lag_ms']:5.0f} ms" if w["lag_ms"] is not None else f"rtt {w['latency_ms']:5.0f} ms"
    own = f"  (window: {w['label']} {w['prob']:.2f})" if w["label"] != w["smoothed_label"] else ""
    return (
        f"  {span:>16}  {w['smoothed_label']:<10} {p:4.2f} {_bar(p)}  "
        f"audio {mw['audio']:.2f} video {mw['video']:.2f}  {timing}{' (late)' if w.get('late') else ''}{own}"
    )


def segments(timeline: list[dict]) -> list[dict]:
    """Runs of the same running (smoothed) label: [{"start", "end", "label", "windows"}]."""
    out: list[dict] = []
    for w in timeline:
        if w["error"] is not None:
            continue
        if out and out[-1]["label"] == w["smoothed_label"]:
            out[-1]["end"], out[-1]["windows"] = w["end"], out[-1]["windows"] + 1
        else:
            out.append({"start": w["start"], "end": w["end"], "label": w["smoothed_label"], "windows": 1})
    return out


def format_summary(summary: dict) -> str:
    lines = [
        f"\nsummary: {summary['windows']} windows over {summary['duration']:.2f} s of media in "
        f"{summary['wall_s']:.2f} s (stopped by: {summary['stopped_by']})"
    ]
    counts = [f"{summary[k]} {k}" for k in ("refused", "shed", "late") if summary.get(k)]
    if counts:
        budget = summary.get("lag_budget_s")
        lines.append(f"  {', '.join(counts)}" + (f" (lag budget {budget:g} s)" if budget else ""))
    if summary.get("label") is not None:
        top = sorted(summary["probs"].items(), key=lambda kv: -kv[1])[:3]
        probs = ", ".join(f"{k} {v:.3f}" for k, v in top)
        lines.append(f"  label: {summary['label']} ({probs}; smoothing {summary['smoothing']})")
        lines.append(
            "  timeline: " + ", ".join(f"{s['start']:.1f}-{s['end']:.1f} s {s['label']}" for s in summary["segments"])
        )
        lat, lag = summary["latency_ms"], summary["lag_ms"]
        timing = f"  round trip p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms"
        if lag:
            timing += (
                f"; lag (last media sample -> answer) p50 {lag['p50']:.1f} ms, p95 {lag['p95']:.1f} ms, "
                f"max {lag['max']:.1f} ms"
            )
        lines.append(timing)
        if summary.get("first_answer_s") is not None:
            lines.append(f"  first answer {summary['first_answer_s']:.2f} s after the capture started")
    for e in summary.get("errors", []):
        lines.append(f"  warning: {e}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  avemo live                                  the default camera + microphone\n"
        "  avemo live --video /dev/video2 --audio hw:1 --audio-format alsa\n"
        "  avemo live --video clip.mp4 --audio clip.mp4 --seconds 10     a file, played at 1x\n"
        "  avemo live --video testsrc2=size=640x480:rate=30 --video-format lavfi --no-audio"
    )
    src = parser.add_argument_group("sources (PyAV/FFmpeg inputs: a device, URL or file)")
    src.add_argument("--video", metavar="DEV", help="camera, URL or file (default: the platform's camera)")
    src.add_argument("--video-format", metavar="FMT", help="input format, e.g. v4l2, avfoundation, dshow, lavfi")
    src.add_argument(
        "--video-option", action="append", metavar="KEY=VALUE", help="input option, e.g. video_size=1280x720 (repeat)"
    )
    src.add_argument("--audio", metavar="DEV", help="microphone, URL or file (default: the platform's microphone)")
    src.add_argument("--audio-format", metavar="FMT", help="input format, e.g. alsa, pulse, avfoundation, dshow")
    src.add_argument("--audio-option", action="append", metavar="KEY=VALUE", help="input option (repeat)")
    src.add_argument("--no-video", action="store_true", help="audio only")
    src.add_argument("--no-audio", action="store_true", help="video only")
    parser.add_argument("--seconds", type=float, help="stop after this much media (default: Ctrl-C or the end)")
    add_client_options(parser)
    add_lag_budget_option(parser, "live sources")
    parser.add_argument("--json", action="store_true", help="print only the JSON summary (with the timeline)")
    parser.add_argument("--plot", metavar="OUT.png", help="also draw the timeline to this PNG")


def _sources_wanted(args) -> dict[str, tuple[list[SourceSpec], str]]:
    from avemo.contract.options import UsageError

    if args.no_video and args.no_audio:
        raise UsageError("--no-video and --no-audio leave nothing to read")
    for kind in ("video", "audio"):
        off = getattr(args, f"no_{kind}")
        if off and (getattr(args, kind) or getattr(args, f"{kind}_format") or getattr(args, f"{kind}_option")):
            raise UsageError(f"--{kind}/--{kind}-format/--{kind}-option contradict --no-{kind}")
    if args.seconds is not None and args.seconds <= 0:
        raise UsageError(f"--seconds must be positive (got {args.seconds:g})")
    wanted = {}
    for kind in ("video", "audio"):
        if getattr(args, f"no_{kind}"):
            continue
        options = parse_options(getattr(args, f"{kind}_option"), f"--{kind}-option")
        url, fmt = getattr(args, kind), getattr(args, f"{kind}_format")
        if url:
            hint = f"check --{kind} {url}" + (f" --{kind}-format {fmt}" if fmt else "") + f", or pass --no-{kind}"
            wanted[kind] = ([SourceSpec(kind, url, fmt, options)], hint)
        else:
            defaults, hint = default_sources(kind)
            if fmt:  # a format without a device: the default devices of that format, else its "default"
                defaults = [SourceSpec(kind, s.url, fmt, {**s.options, **options}) for s in defaults if s.format == fmt]
                defaults = defaults or [SourceSpec(kind, "default", fmt, options)]
            elif options:
                defaults = [SourceSpec(kind, s.url, s.format, {**s.options, **options}) for s in defaults]
            wanted[kind] = (defaults, hint)
    return wanted


def _interrupt_on_sigterm():
    """SIGTERM ends a live run like Ctrl-C (summary, exit 0); returns the previous handler (None: not set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def run(args: argparse.Namespace) -> int:
    from avemo.client.grpc_client import EmotionClient, EmotionClientError
    from avemo.client.predict import plot_timelines, window_entry
    from avemo.client.smoothing import Smoother

    wanted = _sources_wanted(args)
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))

    # 1. the devices first: which devices were tried, and why they failed, needs no server
    opened: list[OpenedSource] = []
    failed = {}
    for kind, (candidates, hint) in wanted.items():
        source, attempts = open_first(candidates)
        if source is None:
            failed[kind] = (attempts, hint)
        else:
            opened.append(source)
    if failed:
        for s in opened:
            s.container.close()
        print(no_device_message(failed), file=sys.stderr)
        return EXIT_NO_DEVICE

    # 2. the server: window geometry and labels come from the served config
    def on_event(line: str) -> None:
        print(f"  [{line}]", file=sys.stderr, flush=True)

    client = EmotionClient(args.url, args.model, timeout=args.timeout, on_event=on_event)
    capture = None
    previous_term = None
    try:
        try:
            served = client.model()
        except EmotionClientError as exc:
            for s in opened:
                s.container.close()
            print(f"error: {exc}\n(is the server running? start it with `avemo serve`)", file=sys.stderr)
            return EXIT_NO_DEVICE
        g, labels = served.geometry, served.labels
        say(
            f"model {served.name} v{served.version} at {args.url}: {len(labels)} classes, "
            f"windows {g.window_seconds:g} s / hop {g.hop_seconds:g} s"
        )
        for s in opened:
            say(f"{s.spec.kind}: {s.describe()}")
        say("Ctrl-C to stop" + (f"; stopping after {args.seconds:g} s" if args.seconds else "") + "\n")

        # 3. capture -> windows -> one gRPC stream -> one line per answer
        smoother = Smoother(args.smooth)
        capture = Capture(opened, g, args.face_crop, seconds=args.seconds)
        timeline: list[dict] = []
        stopped_by, error = "end", None
        previous_term = _interrupt_on_sigterm()
        capture.start()
        assert capture.t_start is not None  # start() set it
        try:
            for r in client.stream_iter(capture.windows(), lag_budget=args.lag_budget):
                smoothed = smoother.update(r.probs) if r.error is None else None
                row = window_entry(r, labels, g.window_seconds, smoothed)
                row["answered_s"] = round(time.perf_counter() - capture.t_start, 3)
                timeline.append(row)
                say(format_window(row))
        except KeyboardInterrupt:
            stopped_by = "interrupted"
        except EmotionClientError as exc:
            stopped_by, error = "server error", str(exc)
        finally:
            wall = time.perf_counter() - capture.t_start
            capture.close()
            if previous_term is not None:
                signal.signal(signal.SIGTERM, previous_term)
                previous_term = None
        if stopped_by == "end" and args.seconds is not None and capture.reached_seconds:
            stopped_by = f"--seconds {args.seconds:g}"
        summary = _summary(
            args.smooth, opened, timeline, labels, capture, wall, stopped_by, error, lag_budget=args.lag_budget
        )
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            print(format_summary(summary), flush=True)
        if args.plot and summary.get("label") is not None:
            say(f"timeline plot: {plot_timelines([summary], args.plot)}")
        if error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        return 0
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        if capture is not None:
            capture.close()
        client.close()


def _summary(smoothing, opened, timeline, labels, capture, wall, stopped_by, error, lag_budget=None) -> dict:
    """predict's clip summary (same keys, so plots and tools read both) plus the live run's own fields."""
    from avemo.client.predict import summarise

    duration = capture.duration
    name = " + ".join(f"{s.spec.kind} {s.spec.describe()}" for s in opened)
    extra = {
        "sources": [
            {"kind": s.spec.kind, "url": s.spec.url, "format": s.spec.format, "paced": s.paced} for s in opened
        ],
        "smoothing": smoothing,
        "segments": segments(timeline),
        "media_seconds": {k: round(v, 3) for k, v in capture.media_seconds.items()},
        "wall_s": round(float(wall), 3),
        "first_answer_s": timeline[0]["answered_s"] if timeline else None,
        "crop_method": capture.assembler.crop_method if capture.assembler is not None else None,
        "stopped_by": stopped_by,
        "errors": list(capture.errors) + ([error] if error else []),
        "lag_budget_s": lag_budget,
    }
    if any(w["error"] is None for w in timeline):
        out = summarise(name, timeline, labels, duration=duration, **extra)
        out["segments"] = segments(timeline)  # summarise clipped the last windows' ends to the media read
        return out
    return {  # nothing answered (stopped before the first window, or every window refused)
        "clip": name,
        "label": None,
        "probs": {},
        "timeline": timeline,
        "latency_ms": None,
        "lag_ms": None,
        "duration": float(duration),
        "windows": len(timeline),
        "refused": sum(1 for w in timeline if not w.get("shed")),
        "shed": sum(1 for w in timeline if w.get("shed")),
        "late": 0,
        **extra,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="avemo live", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
