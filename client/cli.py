"""`avemo predict CLIP [CLIP...]`: stream clips through the served model; each window is printed as its
answer arrives, then the clip label. `--realtime` plays each file at 1x, like a live source, and reports
the lag from each window's last media sample to its answer.

`avemo predict --dataset mosei --data_root FILE --split test` sends a feature file's split through the
served feature model instead (``avemo.feature_predict``: it needs the training install to read the file)."""

from __future__ import annotations

import argparse
import json
import sys

from avemo.client.options import add_client_options, add_lag_budget_option
from avemo.contract.media import MediaError
from avemo.contract.options import add_option

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


def run(args: argparse.Namespace) -> int:
    from avemo.client.grpc_client import EmotionClient, EmotionClientError
    from avemo.client.predict import format_header, format_summary, format_window, plot_timelines, predict_clip

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
        for clip in args.clips:
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
        if args.json:
            print(json.dumps(preds, indent=2))
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
