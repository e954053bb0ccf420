"""`avemo demo --dataset mosei`: the feature path end to end on a generated MOSEI-layout file.

features file -> the unimodal audio and video teachers -> the seed-002 text-audio-video regression model
(MSE + delta_va x distillation from the teachers + delta_nce x InfoNCE against text, the grid-search
guide's defaults, 8 epochs) -> export (ONNX, python flavour) into the repository beside the clip model ->
the embedded Triton server (or with ``--url`` a running one, ``avemo.demo_server``) -> every test sample
through gRPC -> the field's metrics from Triton's answers, side by side with the in-process ones
(`avemo evaluate`), which they must equal.
Writes ``<runs>/feature_demo/summary.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

METRICS = (("Corr", "Corr"), ("MAE", "MAE"), ("Non0_acc_2", "Acc-2"), ("Mult_acc_7", "Acc-7"), ("MSE", "MSE"))


def train_preset(preset: str, out_dir: Path, args: argparse.Namespace, *extra: str) -> dict:
    """metrics of ``avemo train --preset PRESET`` into ``out_dir`` (a finished run of the same configuration
    is reused, an interrupted one resumed)."""
    from avemo.cli import build_parser
    from avemo.training.cli import train_config_from_args
    from avemo.training.train.compare import train_or_reuse

    argv = [
        "--preset", preset, "--data_root", str(args.data_root), "--cache_dir", str(args.cache_dir),
        "--out_dir", str(out_dir), "--epochs", str(args.feature_epochs), "--seed", str(args.seed), "--no_progress",
        "--dataset", args.dataset, *extra,
    ]  # fmt: skip
    cfg = train_config_from_args(build_parser("train").commands["train"].parse_args(argv))
    metrics, _ = train_or_reuse(cfg, retrain=args.retrain, tag=f"[demo {preset}]")
    return metrics


def run(args: argparse.Namespace, out) -> int:
    from avemo.demo_server import demo_server
    from avemo.export.pipeline import export_checkpoint
    from avemo.feature_predict import predict_feature_split
    from avemo.training.evaluation.feature_eval import evaluate_feature_checkpoint
    from avemo.training.models.checkpoint import model_from_checkpoint
    from avemo.training.synthetic.features import write_mmsa_file

    t0 = time.time()
    runs = args.runs / "feature_demo"
    args.data_root = args.data_root or Path("data") / f"{args.dataset}.pkl"
    print(f"[demo] 1/6 features: a generated {args.dataset.upper()}-layout file -> {args.data_root}")
    if not args.data_root.is_file():
        args.data_root.parent.mkdir(parents=True, exist_ok=True)
        write_mmsa_file(args.data_root, dataset=args.dataset, seed=args.seed)
    results, t_train = {}, time.time()
    for i, m in enumerate(("audio", "video")):
        print(f"[demo] {2 + i}/6 the {m} teacher (frozen unimodal model the fused one distils from)")
        results[f"{m} teacher"] = train_preset(f"mosei_{m}_teacher", runs / f"teacher_{m}", args)
    print("[demo] 4/6 the seed-002 text-audio-video model (MSE + delta_va 0.3 x KL + delta_nce 0.001 x InfoNCE)")
    teachers = [f"--teacher_{m}" for m in ("audio", "video")]
    paths = [str(runs / f"teacher_{m}" / "best.pt") for m in ("audio", "video")]
    flags = [x for pair in zip(teachers, paths) for x in pair]
    results["tva"] = train_preset("mosei_tva", runs / "tva", args, *flags)
    t_train = time.time() - t_train
    checkpoint = Path(results["tva"]["checkpoint"])
    print(f"[demo] 5/6 export {checkpoint} -> {args.model_repository}/{args.dataset}")
    report = export_checkpoint(checkpoint, args.model_repository, args.dataset)
    print(f"[demo]   parity max|diff| {report.max_abs_diff} (atol {report.atol})")

    model, ckpt = model_from_checkpoint(checkpoint)
    local = evaluate_feature_checkpoint(model, ckpt, args.data_root, args.dataset, args.cache_dir, "test")
    t_serve = time.time()
    with demo_server(args, args.dataset, Path(report.onnx_path), runs / "triton.log", "6/6") as url:
        print(f"[demo]   every test sample through gRPC ({url})")
        served = predict_feature_split(url, args.dataset, args.data_root, args.dataset, "test", args.cache_dir)
    t_serve = time.time() - t_serve
    diff = max(abs(served["regression"][k] - local["regression"][k]) for k in local["regression"])
    summary = {
        "dataset": args.dataset,
        "data_root": str(args.data_root),
        "test": {name: r.get("test", {}).get("regression", {}) for name, r in results.items()},
        "tva_in_process": local["regression"],
        "tva_through_triton": served["regression"],
        "max_abs_metric_diff": diff,
        "export": json.loads(report.to_json()),
        "seconds": {"train": round(t_train, 1), "serve": round(t_serve, 1), "total": round(time.time() - t0, 1)},
    }
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "summary.json").write_text(json.dumps(summary, indent=2))
    if args.json:
        print(json.dumps(summary, indent=2), file=out)
        return 0
    print(f"\n {args.dataset} test split ({served['n']} samples)", file=out)
    print(" model                      " + "".join(f"{short:>8s}" for _, short in METRICS), file=out)
    rows = [(f"{k} (in-process)", v) for k, v in summary["test"].items()]
    rows.append(("tva through Triton", served["regression"]))
    for name, m in rows:
        print(f" {name:26s} " + "".join(f"{m.get(key, float('nan')):8.3f}" for key, _ in METRICS), file=out)
    print(
        f"\n Triton's answers give the in-process metrics to {diff:.1e} (every metric of `avemo evaluate`); "
        f"total {summary['seconds']['total']:.0f} s; summary in {runs / 'summary.json'}",
        file=out,
    )
    return 0
