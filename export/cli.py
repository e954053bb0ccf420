"""`avemo export CHECKPOINT`: checkpoint -> ONNX / TorchScript in the Triton model repository.

Clip models (audio window + face frames) and utterance-level feature models (text / audio / vision
feature sequences, served under the dataset's name) go through the same contract table and checks.

avemo export runs/gated/best.pt                          # python flavour (the embedded server's)
avemo export runs/gated/best.pt --backend all            # + native onnxruntime and pytorch_libtorch
avemo export runs/gated/best.pt --version 2 --version-policy latest:2   # keep v1, serve both
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from avemo.contract.endpoint import MAX_QUEUE_SIZE, MODEL_NAME, MODEL_REPOSITORY
from avemo.export.config_check import ConfigError
from avemo.export.onnx_export import MIN_OPSET, OPSET, PARITY_ATOL, ParityError
from avemo.export.pipeline import BACKENDS, FORMATS, export_checkpoint
from avemo.export.triton_config import MAX_BATCH_SIZE, parse_version_policy


def _choices(allowed: tuple[str, ...], what: str):
    def parse(text: str) -> list[str]:
        items = list(allowed) if text == "all" else [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown {what} {bad or text!r}; expected {'|'.join(allowed)}|all")
        return items

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="best.pt written by `avemo train`")
    p.add_argument(
        "--model-repository",
        type=Path,
        default=Path(MODEL_REPOSITORY),
        help="Triton model repository (default: %(default)s)",
    )
    p.add_argument(
        "--model-name",
        default=None,
        help=f"model name; native flavours get a suffix: <name>_onnx, <name>_libtorch (default: {MODEL_NAME} for "
        "a clip model, the dataset's name for a feature model: mosei, mosi, sims)",
    )
    p.add_argument(
        "--backend",
        type=_choices(BACKENDS, "backend"),
        default=["python"],
        help="Triton flavours to write, comma-separated or all: python (runs in the embedded server), "
        "onnxruntime, libtorch (native backends of the production image) (default: python)",
    )
    p.add_argument(
        "--format",
        type=_choices(FORMATS, "format"),
        default=None,
        help="files to export and check against eager PyTorch: onnx, torchscript or all "
        "(default: what the backends serve; one no flavour serves is kept next to the first flavour's file)",
    )
    p.add_argument(
        "--version", type=int, default=1, help="version folder to write; others are kept (default: %(default)s)"
    )
    p.add_argument(
        "--version-policy",
        default="latest:1",
        help="which versions Triton serves: latest:N, all, specific:1,2 (default: %(default)s)",
    )
    p.add_argument(
        "--device",
        choices=("gpu", "cpu"),
        default="gpu",
        help="instance kind of the native flavours (the python flavour is always KIND_CPU) (default: %(default)s)",
    )
    p.add_argument(
        "--tensorrt",
        action="store_true",
        help="onnxruntime flavour: TensorRT accelerator with FP16 on the GPU (CUDA execution provider otherwise)",
    )
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset, >= {MIN_OPSET} (default: %(default)s)")
    p.add_argument(
        "--atol",
        type=float,
        default=PARITY_ATOL,
        help="parity tolerance, exported vs eager PyTorch (default: %(default)s)",
    )
    p.add_argument(
        "--max-batch-size", type=int, default=MAX_BATCH_SIZE, help="Triton max_batch_size (default: %(default)s)"
    )
    p.add_argument("--instances", type=int, default=1, help="model instances per server (default: %(default)s)")
    p.add_argument(
        "--max-queue-size",
        type=int,
        default=MAX_QUEUE_SIZE,
        help="requests the dynamic batcher queues before answering busy; size it to what the server computes in "
        "your lag budget (0 = unbounded; default: %(default)s, measured on 2 CPU cores)",
    )
    p.add_argument("--json", action="store_true", help="print the export report as JSON")


def run(args: argparse.Namespace) -> int:
    if args.opset < MIN_OPSET:
        print(f"error: --opset must be >= {MIN_OPSET}, got {args.opset}", file=sys.stderr)
        return 2
    try:
        parse_version_policy(args.version_policy)
    except ValueError as e:
        print(f"error: --version-policy: {e}", file=sys.stderr)
        return 2
    try:
        report = export_checkpoint(
            args.checkpoint,
            args.model_repository,
            args.model_name,
            args.version,
            args.opset,
            args.atol,
            args.max_batch_size,
            args.instances,
            backends=args.backend,
            formats=args.format,
            version_policy=args.version_policy,
            device=args.device,
            tensorrt=args.tensorrt,
            max_queue_size=args.max_queue_size,
        )
    except ParityError as e:
        print(f"error: export failed the parity check: {e}", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"error: a generated config.pbtxt failed the schema check: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(report.to_json())
    else:
        diffs = ", ".join(f"{k} {v:.2g}" for k, v in report.max_abs_diff.items())
        print(
            f"exported {report.fusion} {report.kind} model ({', '.join(report.formats)}); "
            f"parity max|diff| {diffs} (atol {report.atol})"
        )
        for m in report.models:
            print(f"  {m.flavour:<12} {m.name:<18} version {m.version}  {m.file}")
        if report.onnx_path:
            exporter = f"{report.onnx_exporter} exporter"
            print(f"onnxruntime smoke run {report.smoke_ms:.1f} ms (opset {report.opset}, {exporter})")
    return 0
