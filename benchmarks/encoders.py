"""What each encoder pair costs per window: in process, through Triton, and as a live stream.

    .venv/bin/python benchmarks/encoders.py [--pairs cnn+cnn,wav2vec2_base:2+resnet18,...] [--quick] [--json OUT]
    .venv/bin/python benchmarks/serving.py --audio_encoder wav2vec2_base --audio_layers 2 --video_encoder resnet18

A pair is ``AUDIO[:LAYERS]+VIDEO`` (``--pairs``; default ``DEFAULT_PAIRS``). For each, with random weights (the
cost of the pretrained weights is the same: same architecture, same graph):
1. a gated-fusion checkpoint, exported by ``avemo export``'s own function (python flavour: the ONNX graph in
   the Python backend); export seconds and which ONNX exporter worked;
2. in process, before the server starts: eager PyTorch and onnxruntime p50 at batch 1 and windows/s at
   batch 8 (CPU provider, one intra-op thread per core); with ``--int8``, the ONNX graph quantised by
   onnxruntime's ``quantize_dynamic`` (int8 weights of MatMul/Gemm, 7-bit range, the convolutions stay float): p50 and
   max |probs_int8 - probs_fp32| on the contract's example inputs;
3. the embedded Triton on that repository: gRPC p50 at concurrency 1 (``avemo loadgen``'s closed loop), then
   ``avemo predict`` on a generated clip twice: read as fast as it decodes (real-time factor = wall / clip
   seconds; below 1 keeps up with a live source) and paced ``--realtime`` (lag p95, shed and late windows
   under the default lag budget).

Figures go to stdout as a table (and every figure to ``--json``); progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from avemo.training.models.config import SPEECH_ENCODER_NAMES  # noqa: F401 - read by serving.py

DEFAULT_PAIRS = (
    "cnn+cnn",
    "cnn+resnet18",
    "wav2vec2_base:2+cnn",
    "wav2vec2_base:2+resnet18",
    "wav2vec2_base:4+resnet18",
    "wav2vec2_base+resnet18",
    "hubert_base:4+resnet18",
    "hubert_base+resnet18",
    "wavlm_base_plus:4+resnet18",
    "wavlm_base_plus+resnet18",
)
QUICK_PAIRS = ("cnn+cnn", "wav2vec2_base:2+resnet18")
CLIP_SECONDS = 8.0  # the generated clip predict streams (7 windows of 2 s, hop 1 s)
INT8_ATOL = 0.05  # max |probs_int8 - probs_fp32| accepted for the int8 graph (random weights, example inputs)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_pair(text: str) -> dict:
    """``wav2vec2_base:4+resnet18`` -> ModelConfig fields (random weights: ``*_pretrained`` none)."""
    try:
        audio, video = text.split("+")
    except ValueError:
        raise SystemExit(f"--pairs: {text!r} is not AUDIO[:LAYERS]+VIDEO") from None
    audio, _, layers = audio.partition(":")
    return {
        "audio_encoder": audio,
        "audio_layers": int(layers or 0),
        "audio_pretrained": "none",
        "video_encoder": video,
        "video_pretrained": "none",
    }


def make_checkpoint_file(fields: dict, path: Path) -> Path:
    import torch

    from avemo.contract.geometry import DEFAULT_GEOMETRY
    from avemo.contract.labels import label_names
    from avemo.training.models.checkpoint import make_checkpoint
    from avemo.training.models.config import ModelConfig
    from avemo.training.models.model import build_model
    from avemo.training.models.pretrained import check_sources

    cfg = ModelConfig(fusion="gated", **fields)
    check_sources(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, DEFAULT_GEOMETRY).eval()
    torch.save(make_checkpoint(model, cfg, list(label_names(8)), DEFAULT_GEOMETRY, {"val_macro_f1": 0.0}), path)
    return path


def timed(fn, warmup: int, iters: int) -> float:
    """p50 ms of ``fn()`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.percentile(times, 50))


def in_process(ckpt: Path, onnx_path: Path, prof: dict, threads: int, int8: bool, work: Path) -> dict:
    import onnxruntime as ort
    import torch

    from avemo.contract.geometry import DEFAULT_GEOMETRY
    from avemo.export.onnx_export import example_inputs
    from avemo.training.models.checkpoint import model_from_checkpoint
    from avemo.training.models.model import ExportWrapper

    model, _ = model_from_checkpoint(ckpt)
    wrapper = ExportWrapper(model).eval()
    b1, b8 = example_inputs(DEFAULT_GEOMETRY, 1, 2), example_inputs(DEFAULT_GEOMETRY, 8, 3)
    torch.set_num_threads(threads)
    out: dict = {"parameters_m": sum(p.numel() for p in model.parameters()) / 1e6}
    with torch.inference_mode():
        out["eager_p50_ms"] = timed(lambda: wrapper(*b1), prof["warmup"], prof["iters"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1

    def ort_figures(path: Path, key: str) -> np.ndarray:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        f1 = dict(zip(names, (t.numpy() for t in b1)))
        f8 = dict(zip(names, (t.numpy() for t in b8)))
        out[f"{key}_p50_ms"] = timed(lambda: sess.run(None, f1), prof["warmup"], prof["iters"])
        t0 = time.perf_counter()
        for _ in range(prof["batch_iters"]):
            sess.run(None, f8)
        out[f"{key}_b8_windows_s"] = 8 * prof["batch_iters"] / (time.perf_counter() - t0)
        return sess.run(None, f8)[0]

    ref = ort_figures(onnx_path, "ort")
    out["onnx_mb"] = onnx_path.stat().st_size / 2**20
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        q = work / "model.int8.onnx"
        # reduce_range: 7-bit weights. On x86 CPUs without VNNI (AVX2 only), onnxruntime's u8 x s8 kernels add
        # pairs of products in int16, which full-range weights can saturate (docs/real_recordings.md has the
        # figures); onnxruntime's quantisation guide advises it there.
        quantize_dynamic(
            str(onnx_path),
            str(q),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            reduce_range=True,
        )
        got = ort_figures(q, "int8")
        out["int8_max_abs_diff"] = float(np.abs(got - ref).max())
        out["int8_within_atol"] = out["int8_max_abs_diff"] <= INT8_ATOL
        out["int8_mb"] = q.stat().st_size / 2**20
    return out


def through_triton(repo: Path, clip: Path, prof: dict, work: Path) -> dict:
    from avemo.client.grpc_client import EmotionClient
    from avemo.client.loadgen import make_windows, run_concurrency
    from avemo.client.predict import predict_clip
    from avemo.contract.endpoint import MODEL_NAME
    from avemo.serving.server import ServerPorts, TritonServer

    server = TritonServer(repo, ServerPorts.free(), log_file=work / "triton.log")
    server.start(timeout=600)
    try:
        out: dict = {}
        with EmotionClient(server.url, MODEL_NAME) as client:
            windows = make_windows(client.model())
            for _ in range(prof["warmup"]):
                client.infer(windows[0].audio, windows[0].frames, windows[0].mask)
            r = run_concurrency(server.url, MODEL_NAME, 1, prof["duration"], windows=windows)
            out["triton_c1_p50_ms"] = r.latency_ms.p50 if r.latency_ms else None
            out["triton_c1_windows_s"] = r.throughput
            fast = predict_clip(client, clip, realtime=False)
            out["rtf"] = fast["realtime_factor"]
            live = predict_clip(client, clip, realtime=True)
            out["live_lag_p95_ms"] = live["lag_ms"].get("p95")
            out["live_shed"], out["live_late"] = live["shed"], live["late"]
            out["live_windows"] = len(live["timeline"])
        return out
    finally:
        server.stop()


def generated_clip(path: Path) -> Path:
    """A CLIP_SECONDS MP4 with speech-like audio and a drawn face, from the corpus generator."""
    from avemo.training.synthetic.corpus import write_mp4

    sr, fps, size = 16000, 30, 256
    t = np.arange(int(CLIP_SECONDS * sr)) / sr
    pitch = 140 + 40 * np.sin(2 * np.pi * 3 * t)  # Hz, a voice-like glide
    audio = 0.3 * np.sin(2 * np.pi * pitch * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
    frames = np.zeros((int(CLIP_SECONDS * fps), size, size, 3), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(len(frames)):
        face = ((xx - size / 2) ** 2 / 60**2 + (yy - size / 2 - 4 * np.sin(i / 5)) ** 2 / 80**2) < 1
        frames[i][face] = (200, 160, 130)
    write_mp4(path, audio.astype(np.float32), frames, audio_rate=sr, fps=fps)
    return path


def fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict], int8: bool) -> None:
    head = ["pair", "params M", "export", "eager p50", "ORT p50", "ORT b8 win/s", "Triton p50", "RTF", "live lag p95",
            "shed/late"]  # fmt: skip
    if int8:
        head[6:6] = ["int8 p50", "int8 |dp|"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [
            r["pair"],
            fmt(r.get("parameters_m")),
            r.get("exporter", "-").split(" ")[0],
            fmt(r.get("eager_p50_ms")) + " ms",
            fmt(r.get("ort_p50_ms")) + " ms",
            fmt(r.get("ort_b8_windows_s")),
            fmt(r.get("triton_c1_p50_ms")) + " ms",
            fmt(r.get("rtf"), ".2f"),
            fmt(r.get("live_lag_p95_ms"), ".0f") + " ms",
            f"{r.get('live_shed', '-')}/{r.get('live_late', '-')}",
        ]
        if int8:
            cells[6:6] = [fmt(r.get("int8_p50_ms")) + " ms", fmt(r.get("int8_max_abs_diff"), ".3f")]
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pairs", help=f"comma-separated AUDIO[:LAYERS]+VIDEO (default: {','.join(DEFAULT_PAIRS)})")
    p.add_argument("--quick", action="store_true", help=f"few iterations; pairs {','.join(QUICK_PAIRS)} by default")
    p.add_argument("--int8", action="store_true", help="also time the int8 dynamic quantisation of each ONNX graph")
    p.add_argument("--no-triton", action="store_true", help="in-process figures only")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="in-process threads (cores)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write every figure here")
    args = p.parse_args(argv)
    pairs = args.pairs.split(",") if args.pairs else list(QUICK_PAIRS if args.quick else DEFAULT_PAIRS)
    prof = ({"warmup": 2, "iters": 8, "batch_iters": 2, "duration": 3.0} if args.quick else
            {"warmup": 5, "iters": 30, "batch_iters": 5, "duration": 10.0})  # fmt: skip
    from avemo.export.pipeline import export_checkpoint

    rows = []
    with tempfile.TemporaryDirectory(prefix="avemo-encoders-") as tmp:
        clip = generated_clip(Path(tmp) / "clip.mp4")
        for pair in pairs:
            work = Path(tmp) / pair.replace(":", "_").replace("+", "__")
            work.mkdir()
            log(f"[{pair}] checkpoint and export ...")
            ckpt = make_checkpoint_file(parse_pair(pair), work / "best.pt")
            t0 = time.perf_counter()
            report = export_checkpoint(ckpt, work / "repo", backends=("python",))
            row = {"pair": pair, "export_s": time.perf_counter() - t0, "exporter": report.onnx_exporter,
                   "parity": max(report.max_abs_diff.values())}  # fmt: skip
            log(f"[{pair}] in process ...")
            row |= in_process(ckpt, Path(report.onnx_path), prof, args.threads, args.int8, work)
            if not args.no_triton:
                log(f"[{pair}] Triton and predict ...")
                row |= through_triton(work / "repo", clip, prof, work)
            log(f"[{pair}] {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})}")
            rows.append(row)
    env = {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
           "threads": args.threads, "clip_seconds": CLIP_SECONDS}  # fmt: skip
    print(f"encoders on {env['cores']} cores ({env['cpu']}), {args.threads} threads in process, "
          f"predict on a generated {CLIP_SECONDS:g} s clip")  # fmt: skip
    print_table(rows, args.int8)
    if args.json:
        args.json.write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
