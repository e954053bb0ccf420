"""Options shared by the client commands (`avemo predict`, `avemo live`, `avemo app`): which server and
model, how long to wait, the face crop and the smoothing. Light imports only (no tritonclient, no gradio)."""

from __future__ import annotations

import argparse

from avemo.client.smoothing import DEFAULT_SMOOTHING, parse_smoothing
from avemo.contract.endpoint import CLIENT_TIMEOUT, GRPC_URL, LAG_BUDGET_S, MODEL_NAME
from avemo.contract.faces import FACE_CROP_METHODS


def smoothing_spec(text: str) -> str:
    """argparse ``type`` for --smooth: the spec itself, or an argparse error naming the accepted forms."""
    try:
        parse_smoothing(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_client_options(parser: argparse.ArgumentParser, face_crop: bool = True) -> None:
    """--url, --model, --timeout, --face-crop (unless ``face_crop=False``) and --smooth."""
    parser.add_argument("--url", default=GRPC_URL, help="Triton gRPC address (default: %(default)s)")
    parser.add_argument("--model", default=MODEL_NAME, help="served model name (default: %(default)s)")
    parser.add_argument(
        "--timeout", type=float, default=CLIENT_TIMEOUT, help="seconds to wait for the server (default: %(default)s)"
    )
    if face_crop:
        parser.add_argument(
            "--face-crop", default="auto", choices=FACE_CROP_METHODS, help="face crop method (default: %(default)s)"
        )
    parser.add_argument(
        "--smooth",
        default=DEFAULT_SMOOTHING,
        type=smoothing_spec,
        metavar="SPEC",
        help='smoothing of window probabilities over time: "none", "ema:A" (0<A<=1) or "median:K" '
        "(default: %(default)s); it gives the running label, and the clip label is the argmax of the mean "
        "of the smoothed probabilities",
    )


def lag_budget(text: str) -> float | None:
    """argparse ``type`` for --lag-budget: seconds > 0, or 0 / "none" for no budget."""
    if text.strip().lower() in ("0", "none", "off"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (e.g. 1.5) or 'none', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {value:g}")
    return value


def add_lag_budget_option(parser: argparse.ArgumentParser, what: str) -> None:
    """--lag-budget: a live source drops a window whose answer would come later than this after its media."""
    parser.add_argument(
        "--lag-budget",
        type=lag_budget,
        default=LAG_BUDGET_S,
        metavar="S",
        help=f"{what}: drop (shed) a window whose answer would come more than S s after its last media sample "
        "instead of queueing it when the server is overloaded; 0 or none = keep every window "
        "(default: %(default)s)",
    )
