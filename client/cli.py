"""`avemo predict CLIP [CLIP...]`: stream clips through the served model; each window is printed as its
answer arrives, then the clip label. `--realtime` plays each file at 1x, like a live source, and reports
the lag from each window's last media sample to its answer.

`avemo predict --dataset mosei --data_root FILE --split test` sends a feature file's split through the
served feature model instead (``avemo.feature_predict``: it needs the training install to read the file)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from avemo.client.options import add_client_options, add_lag_budget_option
from avemo.contract.media import MediaError
from avemo.contract.options import UsageError, add_option

# the feature datasets a served model can read: utterance-level, then conversations (one dialogue per request)
FEATURE_DATASETS = ("mosi", "mosei", "sims", "iemocap", "iemocap_4", "meld", "meld_sentiment")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("clips", nargs="*", metavar="CLIP", help="audio/video files (.mp4, .wav, ...)")
    add_client_options(parser)
    feat = parser.add_argument_group("feature files (instead of clips; model: the dataset's name unless --model)")
    add_option(feat, "dataset", choices=FEATURE_DATASETS, default=None, help="a feature dataset's served model")
    add_option(feat, "data_root", default=None, metavar="FILE", help="the feature file (MMSA or dialogue pickle)")
    add_option(feat, "split", choices=("train", "val", "test"), default="test", help="(default: %(default)s)")
    add_option(feat, "cache_dir", default="cache", help="feature cache, shared with training (default: %(default)s)")
    add_option(
        feat, "batch_size", type=int, default=None, help="samples per request (default: the served max_batch_size)"
    )
    add_option(feat, "concurrency", type=int, default=4, help="requests in flight (default: %(default)s)")
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="play each file at 1x like a live source and report the lag from each window's last sample to its answer",
    )
    add_lag_budget_option(parser, "with --realtime")
    parser.add_argument("--json", action="store_true", help="print JSON only (one object per clip, as a list)")
    parser.add_argument("--plot", metavar="OUT.png", help="also draw the prediction timelines to this PNG")
    parser.add_argument(
        "--timeline-json",
        metavar="OUT.json",
        help="also write the predictions to this file (what --json prints: a list, one object per clip)",
    )
    parser.add_argument(
        "--timeline-csv",
        metavar="OUT.csv",
        help="also write every window of every clip as a CSV row (clip, window, start, end, label, prob, "
        "smoothed_label, smoothed_prob, audio_weight, video_weight, latency_ms, error, p_<label>...)",
    )
    parser.add_argument(
        "--annotate",
        metavar="OUT.mp4",
        help="also write the clip with the crop the model saw (the tracked face box, or the dashed centre square "
        "it fell back to) and the running label drawn on its frames, as a browser-playable H.264 MP4 with its "
        "audio; with several clips OUT must be a folder (an existing one, or a path ending in /): one "
        "STEM.annotated.mp4 per clip",
    )


def annotate_targets(out: str | None, clips: list[str]) -> list[Path | None]:
    """Where ``--annotate OUT`` writes each clip's annotated MP4 (None: not annotated); UsageError when it cannot."""
    from avemo.client.annotate import annotated_name

    if not out:
        return [None] * len(clips)
    folder = Path(out).is_dir() or out.endswith(("/", os.sep))
    if not folder:
        if len(clips) > 1:
            raise UsageError(
                f"--annotate {out}: one file for {len(clips)} clips; give a folder (an existing one, or a path "
                "ending in /) to get one STEM.annotated.mp4 per clip"
            )
        return [Path(out)]
    targets = [Path(out) / annotated_name(c) for c in clips]
    twice = sorted({t.name for t in targets if targets.count(t) > 1})
    if twice:
        raise UsageError(f"--annotate {out}: several clips would write {', '.join(twice)} (same file name)")
    return list(targets)


def run(args: argparse.Namespace) -> int:
    from avemo.client.annotate import write_annotated
    from avemo.client.grpc_client import EmotionClient, EmotionClientError
    from avemo.client.predict import format_header, format_summary, format_window, plot_timelines, predict_clip
    from avemo.client.timeline_files import write_timeline_csv, write_timeline_json

    targets = annotate_targets(args.annotate, args.clips)
    client = EmotionClient(args.url, args.model, timeout=args.timeout)
    try:
        try:
            served = client.model()
        except EmotionClientError as exc:
            print(f"error: {exc}\n(is the server running? start it with `avemo serve`)", file=sys.stderr)
            return 2
        if not args.json:
            g = served.geometry
            print(
                f"model {served.name} v{served.version} at {args.url}: {len(served.labels)} classes, "
                f"windows {g.window_seconds:g} s / hop {g.hop_seconds:g} s, "
                f"{g.sample_rate} Hz audio, {g.video_fps} fps {g.face_size}px faces\n"
            )
        preds, failed = [], 0
        for clip, target in zip(args.clips, targets):
            boxes: list = []  # the face box of every crop the model saw (annotation)
            if not args.json:
                print(f"{clip}{' (real time)' if args.realtime else ''}\n{format_header()}", flush=True)
            on_window = None if args.json else lambda w: print(format_window(w), flush=True)
            try:
                pred = predict_clip(
                    client,
                    clip,
                    args.face_crop,
                    smoothing=args.smooth,
                    realtime=args.realtime,
                    on_window=on_window,
                    lag_budget=args.lag_budget,
                    on_face=boxes.append if target is not None else None,
                )
            except (MediaError, FileNotFoundError, ValueError) as exc:
                print(f"error: skipping {clip}: {exc}", file=sys.stderr)
                failed += 1
                continue
            except EmotionClientError as exc:
                print(f"error: {clip}: server error: {exc}", file=sys.stderr)
                failed += 1
                continue
            except Exception as exc:  # noqa: BLE001 - one bad clip must not stop the others
                print(f"error: skipping {clip}: {type(exc).__name__}: {exc}", file=sys.stderr)
                failed += 1
                continue
            preds.append(pred)
            if not args.json:
                print(format_summary(pred) + "\n", flush=True)
            if target is not None:
                try:
                    write_annotated(clip, target, boxes, pred["timeline"], served.geometry.video_fps)
                except MediaError as exc:
                    print(f"error: {clip}: no annotated clip: {exc.reason}", file=sys.stderr)
                    failed += 1
                else:
                    if not args.json:
                        print(f"annotated clip: {target}\n", flush=True)
        if args.json:
            print(json.dumps(preds, indent=2))
        for out, write in ((args.timeline_json, write_timeline_json), (args.timeline_csv, write_timeline_csv)):
            if out and preds:
                path = write(preds, out)
                if not args.json:
                    print(f"timeline: {path}")
        if args.plot and preds:
            path = plot_timelines(preds, args.plot)
            if not args.json:
                print(f"timeline plot: {path}")
        return 1 if failed else 0
    finally:
        client.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="avemo predict", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
