"""`avemo demo`: the main job, end to end on the generated corpus (`--dataset mosei`: the feature path,
``avemo.feature_demo``).

corpus -> cache -> train gated fusion + audio-only + video-only baselines -> export the gated model
-> start the bundled Triton server -> stream every held-out test clip through gRPC -> clip-level
accuracy and macro-F1 computed from Triton's answers -> stop the server.
Writes ``<runs>/demo_summary.json`` and prints a table.

``--url HOST:PORT``: a running Triton server takes the embedded one's place (``avemo.demo_server``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from avemo.contract.endpoint import MODEL_NAME, MODEL_REPOSITORY
from avemo.demo_server import RemoteServerError, check_server, demo_server


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        choices=("ravdess", "mosi", "mosei", "sims"),
        default="ravdess",
        help="ravdess: audio-video clips; mosi|mosei|sims: a generated feature file through the text-audio-video "
        "teachers and the seed-002 regression model (default: %(default)s)",
    )
    p.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="corpus folder, or the feature file with --dataset mosei (default: data/corpus, data/<dataset>.pkl)",
    )
    p.add_argument(
        "--actors", type=int, default=24, help="actors in the generated corpus, 30 clips each (default: %(default)s)"
    )
    p.add_argument("--cache-dir", type=Path, default=Path("cache"), help="decoded-clip cache (default: %(default)s)")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="run folders (default: %(default)s)")
    p.add_argument(
        "--model-repository",
        type=Path,
        default=Path(MODEL_REPOSITORY),
        help="Triton model repository (default: %(default)s)",
    )
    p.add_argument(
        "--url",
        default=None,
        metavar="HOST:PORT",
        help="gRPC address of a running Triton server to use instead of starting the embedded one; it must read "
        "--model-repository in explicit model-control mode: the demo asks it to load the exported model "
        "(default: start the embedded server, Linux x86_64/aarch64 only)",
    )
    p.add_argument("--epochs", type=int, default=12, help="max epochs of the baselines (default: %(default)s)")
    p.add_argument(
        "--fusion-epochs",
        type=int,
        default=16,
        help="max epochs of the fusion model: two encoders and three heads, still improving at 12 (default: "
        "%(default)s)",
    )
    p.add_argument(
        "--fusions", default="audio,video,gated", help="models to train; the last is served (default: %(default)s)"
    )
    p.add_argument(
        "--feature-epochs",
        type=int,
        default=8,
        help="--dataset mosei: epochs of each feature model, the grid-search guide's (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--retrain", action="store_true", help="train even when a finished run exists")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def train_or_reuse(fusion: str, args: argparse.Namespace) -> dict:
    """metrics of ``<runs>/<fusion>``: a finished run of the same configuration is reused, an interrupted
    one resumed (``avemo.training.train.compare.train_or_reuse``)."""
    from avemo.training.train import compare
    from avemo.training.train.config import TrainConfig

    base = TrainConfig(data_root=str(args.data_root), cache_dir=str(args.cache_dir), epochs=args.epochs, seed=args.seed)
    cfg = compare.fusion_config(base, fusion, args.runs, args.fusion_epochs)  # the fusion model: --fusion-epochs
    metrics, _ = compare.train_or_reuse(cfg, retrain=args.retrain, tag="[demo]")
    return metrics


def run(args: argparse.Namespace) -> int:
    """With --json, stdout carries only the summary document; progress lines go to stderr."""
    check_server(args)  # before minutes of training
    from avemo.training.cli import progress_to_stderr

    out = sys.stdout
    with progress_to_stderr(args.json):
        try:
            if args.dataset != "ravdess":
                from avemo import feature_demo

                return feature_demo.run(args, out)
            args.data_root = args.data_root or Path("data/corpus")
            return _run(args, out)
        except RemoteServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1


def _run(args: argparse.Namespace, out) -> int:
    import numpy as np

    from avemo.client.grpc_client import EmotionClient
    from avemo.client.predict import predict_clip
    from avemo.contract.progress import progress
    from avemo.export.pipeline import export_checkpoint
    from avemo.training.cli import summary_line
    from avemo.training.data import ravdess
    from avemo.training.evaluation.metrics import classification_metrics
    from avemo.training.synthetic.corpus import DEFAULT_REPETITIONS, corpus_plan, generate_corpus

    t0 = time.time()
    fusions = [f.strip() for f in args.fusions.split(",") if f.strip()]
    per_actor = len(corpus_plan(1, repetitions=DEFAULT_REPETITIONS))
    print(f"[demo] 1/5 corpus: {args.actors} actors x {per_actor} clips -> {args.data_root}")
    generate_corpus(args.data_root, n_actors=args.actors, seed=args.seed, repetitions=DEFAULT_REPETITIONS, jobs=2)
    results = {}
    for i, fusion in enumerate(fusions):
        print(f"[demo] 2/5 training {fusion} ({i + 1}/{len(fusions)})")
        results[fusion] = train_or_reuse(fusion, args)
        print("[demo]   " + summary_line(results[fusion]))
    served = fusions[-1]
    print(f"[demo] 3/5 export {served} -> {args.model_repository}/{MODEL_NAME}")
    report = export_checkpoint(Path(results[served]["checkpoint"]), args.model_repository, MODEL_NAME)
    print(f"[demo]   parity max|diff| {report.max_abs_diff} (atol {report.atol})")

    labels = list(report.labels)  # the served model's classes, as stored in its checkpoint
    items, _ = ravdess.scan(args.data_root, num_classes=len(labels))
    test_items = ravdess.make_splits(items, "actor")["test"]
    y_true: list[int] = []
    y_pred: list[int] = []
    latencies: list[float] = []
    failed: list[dict[str, str]] = []
    with demo_server(args, MODEL_NAME, Path(report.onnx_path), args.runs / "triton.log", "4/5") as url:
        client = EmotionClient(url, MODEL_NAME)
        print(f"[demo] 5/5 streaming {len(test_items)} test clips through Triton")
        for it in progress(test_items, desc="predict via Triton", unit="clip"):
            try:
                res = predict_clip(client, it.path)
            except Exception as e:  # noqa: BLE001 - report and skip a bad clip
                failed.append({"path": str(it.path), "reason": str(e)})
                continue
            y_true.append(labels.index(it.label_name))
            y_pred.append(labels.index(res["label"]))
            latencies.extend(w["latency_ms"] for w in res["timeline"] if "latency_ms" in w)
        client.close()
    triton = classification_metrics(y_true, y_pred, labels)
    lat = np.asarray(latencies) if latencies else np.asarray([np.nan])
    summary = {
        "test_clip_macro_f1": {f: results[f].get("test", {}).get("clip", {}).get("macro_f1") for f in fusions},
        "test_clip_accuracy": {f: results[f].get("test", {}).get("clip", {}).get("accuracy") for f in fusions},
        "served_model": served,
        "triton": {
            "clips": triton["n"],
            "accuracy": triton["accuracy"],
            "macro_f1": triton["macro_f1"],
            "per_class_f1": triton["per_class_f1"],
            "failed": failed,
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95))},
        },
        "export": json.loads(report.to_json()),
        "seconds": round(time.time() - t0, 1),
    }
    args.runs.mkdir(parents=True, exist_ok=True)
    (args.runs / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    if args.json:
        print(json.dumps(summary, indent=2), file=out)
    else:
        print("\n test split, clip level (in-process PyTorch)")
        print(" model      macro-F1  accuracy")
        for f in fusions:
            print(f" {f:9s}  {summary['test_clip_macro_f1'][f]:.3f}     {summary['test_clip_accuracy'][f]:.3f}")
        ms = summary["triton"]["latency_ms"]
        print(
            f"\n through Triton ({served}, {triton['n']} clips, gRPC stream): accuracy {triton['accuracy']:.3f}, "
            f"macro-F1 {triton['macro_f1']:.3f}; window round trip p50 {ms['p50']:.1f} ms, p95 {ms['p95']:.1f} ms"
        )
        if failed:
            print(f" {len(failed)} clips failed: {failed}")
        print(f" total {summary['seconds']:.0f} s; summary in {args.runs / 'demo_summary.json'}")
    return 0 if not failed else 1
