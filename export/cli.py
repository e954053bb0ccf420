"""`avemo export CHECKPOINT`: checkpoint -> ONNX in the Triton model repository."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from avemo.contract.endpoint import MODEL_NAME, MODEL_REPOSITORY
from avemo.export.onnx_export import MIN_OPSET, OPSET, PARITY_ATOL, ParityError, export_checkpoint
from avemo.export.triton_repo import MAX_BATCH_SIZE


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="best.pt written by `avemo train`")
    p.add_argument(
        "--model-repository",
        type=Path,
        default=Path(MODEL_REPOSITORY),
        help="Triton model repository (default: %(default)s)",
    )
    p.add_argument(
        "--model-name", default=MODEL_NAME, help="model folder name in the repository (default: %(default)s)"
    )
    p.add_argument("--version", type=int, default=1, help="model version folder (default: %(default)s)")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset, >= {MIN_OPSET} (default: %(default)s)")
    p.add_argument(
        "--atol",
        type=float,
        default=PARITY_ATOL,
        help="parity tolerance, onnxruntime vs PyTorch (default: %(default)s)",
    )
    p.add_argument(
        "--max-batch-size", type=int, default=MAX_BATCH_SIZE, help="Triton max_batch_size (default: %(default)s)"
    )
    p.add_argument("--instances", type=int, default=1, help="model instances per server (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the export report as JSON")


def run(args: argparse.Namespace) -> int:
    if args.opset < MIN_OPSET:
        print(f"error: --opset must be >= {MIN_OPSET}, got {args.opset}", file=sys.stderr)
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
        )
    except ParityError as e:
        print(f"error: export failed the parity check: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(report.to_json())
    else:
        diffs = ", ".join(f"{k} {v:.2g}" for k, v in report.max_abs_diff.items())
        print(
            f"exported {report.fusion} model to {report.model_dir} (opset {report.opset}); "
            f"parity max|diff| {diffs} (atol {report.atol}); smoke run {report.smoke_ms:.1f} ms"
        )
    return 0
