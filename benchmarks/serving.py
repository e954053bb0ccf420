"""Serving speed in one run: in-process eager / TorchScript / onnxruntime, then Triton gRPC, shm and streams.

    .venv/bin/python benchmarks/serving.py --checkpoint runs/gated/best.pt [--model-repository model_repository]
        [--quick] [--concurrency 1,4,8,16] [--duration 10] [--streams 16] [--stream-seconds 60] [--json OUT]
    .venv/bin/python benchmarks/serving.py --audio_encoder cnn,wav2vec2_base --audio_layers 2,12 \
        --video_encoder resnet18
        (encoder pairs, random weights: benchmarks/encoders.py)

1. In process, before any server runs (no CPU contention): eager PyTorch (the checkpoint's
   ``ExportWrapper`` under ``torch.inference_mode``), TorchScript (``<model>/<v>/model.pt`` of a
   pytorch_libtorch model in the repository, when there is one) and onnxruntime (each distinct
   ``model.onnx`` of the repository; CPUExecutionProvider, intra-op threads = cores): latency p50/p95 at
   batch 1 and throughput (windows/s) at batch 8, after warm-up calls. Inputs: ``example_inputs``.
2. The embedded Triton on the repository (free ports), started after step 1 released its models: for
   each model the server loaded (python / onnxruntime / libtorch flavours), closed-loop gRPC at each
   concurrency (one window per request, ``avemo.client.loadgen``), and system shared memory at
   concurrency 1; each with the server's split per request (queue, compute_input, compute_infer,
   compute_output in us, from ``get_inference_statistics`` deltas) and the mean executed batch.
3. ``--streams`` concurrent bidirectional streams at the real-time hop rate for ``--stream-seconds`` on
   the default model: errors (must be 0), latency p50/p95, lag, throughput.
4. The ratios of the serving issue, each from figures of this run, with PASS / MISS.

The load generator runs in this process: its client work shares the CPU with the server, as any
same-host client would. A piece that is not there (no model.pt, a flavour the server did not load) is
printed as "skipped (why)".

A feature checkpoint (``model_config.input_dims``: text / audio / vision feature sequences, e.g. MOSEI) is
measured the same way on its own flavours (``<dataset>``, ``<dataset>_onnx``, ``<dataset>_libtorch``), one
sample per request, at concurrency 1, 8, 16 by default; streams do not apply; its ratios are the Triton
overhead at c=1 (ms) and the c=8 throughput over in-process onnxruntime at batch 8 (``serving_features``).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import serving_features as feat  # benchmarks/serving_features.py: this script's folder is on sys.path

from avemo.client.loadgen import make_windows, run_concurrency, run_streams
from avemo.client.loadgen_cli import format_table, summary_line
from avemo.contract.endpoint import MODEL_NAME, MODEL_REPOSITORY

QUICK = {"warmup": 2, "iters": 10, "batch_iters": 3, "duration": 1.5, "stream_seconds": 5.0}
FULL = {"warmup": 10, "iters": 100, "batch_iters": 20, "duration": 10.0, "stream_seconds": 60.0}
THROUGHPUT_BATCH = 8
# targets of the serving issue
TARGET_ORT_SPEEDUP = 2.5  # eager p50 / onnxruntime p50, batch 1: at least
TARGET_TRITON_OVERHEAD = 2.0  # Triton gRPC p50 at c=1 / in-process onnxruntime p50: at most
TARGET_TRITON_THROUGHPUT = 0.95  # Triton throughput at c=8 / in-process onnxruntime best throughput: at least


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ repository


@dataclass
class RepoModel:
    name: str
    kind: str  # "python" (ONNX through the Python backend), "onnxruntime", "libtorch" or "other"
    onnx: Path | None  # the newest version's model.onnx, if any
    torchscript: Path | None  # the newest version's model.pt, if any (also kept beside an ONNX by --format all)
    served_kind: str = "clip"  # the config's ``kind`` parameter: "clip", "features" or "dialogue"


def scan_repository(repo: Path) -> list[RepoModel]:
    """Every model folder with a config.pbtxt: its flavour (``backend`` / ``platform``) and model files."""
    kind_of = {"python": "python", "onnxruntime": "onnxruntime", "onnxruntime_onnx": "onnxruntime"}
    kind_of |= {"pytorch": "libtorch", "pytorch_libtorch": "libtorch"}
    found = []
    for cfg in sorted(Path(repo).glob("*/config.pbtxt")):
        text = cfg.read_text()
        words = re.findall(r'^\s*(?:backend|platform)\s*:\s*"([^"]+)"', text, re.M)
        served_kind = re.search(r'key\s*:\s*"kind"\s*value\s*:\s*\{\s*string_value\s*:\s*"([^"]*)"', text)
        kind = next((kind_of[w] for w in words if w in kind_of), "other")
        versions = [v for v in cfg.parent.iterdir() if v.is_dir() and v.name.isdigit()]
        versions.sort(key=lambda v: -int(v.name))  # newest first
        newest = {f: next((v / f for v in versions if (v / f).is_file()), None) for f in ("model.onnx", "model.pt")}
        found.append(
            RepoModel(
                cfg.parent.name,
                kind,
                newest["model.onnx"],
                newest["model.pt"],
                served_kind.group(1) if served_kind else "clip",
            )
        )
    return found


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------ in process


def latency_and_throughput(run_b1, run_b8, warmup: int, iters: int, batch_iters: int) -> dict:
    """p50/p95/mean ms of ``run_b1()`` (one window) and windows/s of ``run_b8()`` (THROUGHPUT_BATCH windows)."""
    for _ in range(warmup):
        run_b1()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        run_b1()
        times.append((time.perf_counter() - t0) * 1000.0)
    for _ in range(max(1, warmup // 2)):
        run_b8()
    t0 = time.perf_counter()
    for _ in range(batch_iters):
        run_b8()
    b8 = THROUGHPUT_BATCH * batch_iters / (time.perf_counter() - t0)
    a = np.asarray(times)
    mean = float(a.mean())
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "mean_ms": mean,
        "throughput_b1": 1000.0 / mean,
        "throughput_b8": b8,
        "best_throughput": max(1000.0 / mean, b8),
    }


def measure_in_process(ckpt_path: Path, repo_models: list[RepoModel], prof: dict, threads: int) -> dict:
    """Eager, TorchScript and onnxruntime figures (see the module docstring); entries are None when skipped.
    A feature checkpoint is measured through its ``FeatureExportWrapper`` on its signature's inputs."""
    import torch

    from avemo.contract.geometry import WindowGeometry
    from avemo.export.onnx_export import example_inputs
    from avemo.training.models.checkpoint import load_checkpoint, model_from_checkpoint
    from avemo.training.models.model import ExportWrapper

    torch.set_num_threads(threads)
    ckpt = load_checkpoint(ckpt_path)
    if ckpt["model_config"].get("input_dims"):
        spec, wrapper = feat.feature_wrapper(ckpt)
        out: dict = {"signature": spec.parameters(), "threads": threads, "skipped": {}}
    else:
        spec = WindowGeometry.from_dict(ckpt["geometry"])
        wrapper = None  # built below, after the inputs, as before
        out = {"geometry": spec.to_dict(), "threads": threads, "skipped": {}}
    unit = "samples" if wrapper is not None else "windows"
    b1 = example_inputs(spec, 1, seed=0)
    b8 = example_inputs(spec, THROUGHPUT_BATCH, seed=1)
    reps = (prof["warmup"], prof["iters"], prof["batch_iters"])

    def torch_figures(module) -> dict:
        with torch.inference_mode():
            return latency_and_throughput(lambda: module(*b1), lambda: module(*b8), *reps)

    log("[in-process] eager PyTorch ...")
    if wrapper is None:
        wrapper = ExportWrapper(model_from_checkpoint(ckpt)[0]).eval()
    out["eager"] = torch_figures(wrapper)
    log(f"[in-process]   {_brief(out['eager'], unit)}")
    del wrapper

    scripted = sorted((m for m in repo_models if m.torchscript is not None), key=lambda m: m.kind != "libtorch")
    if scripted:
        path = scripted[0].torchscript
        log(f"[in-process] TorchScript {path} ...")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": it is what Triton loads
            module = torch.jit.load(str(path), map_location="cpu").eval()
        out["torchscript"] = {"file": str(path), **torch_figures(module)}
        log(f"[in-process]   {_brief(out['torchscript'], unit)}")
        del module
    else:
        out["torchscript"] = None
        out["skipped"]["torchscript"] = "no model.pt in the repository (`avemo export --backend all --format all`)"
        log(f"[in-process] TorchScript skipped ({out['skipped']['torchscript']})")

    out["onnxruntime"] = {}
    seen: dict[str, str] = {}
    for m in repo_models:
        if m.onnx is None:
            continue
        digest = _sha(m.onnx)
        if digest in seen:  # the same graph served twice: measured once
            out["onnxruntime"][m.name] = {"same_as": seen[digest]}
            continue
        seen[digest] = m.name
        log(f"[in-process] onnxruntime {m.onnx} ({threads} intra-op threads) ...")
        figs = _ort_figures(m.onnx, threads, [t.numpy() for t in b1], [t.numpy() for t in b8], reps)
        out["onnxruntime"][m.name] = {"file": str(m.onnx), **figs}
        log(f"[in-process]   {_brief(figs, unit)}")
    if not seen:
        out["skipped"]["onnxruntime"] = "no model.onnx in the repository"
        log(f"[in-process] onnxruntime skipped ({out['skipped']['onnxruntime']})")
    gc.collect()
    return out


def _ort_figures(path: Path, threads: int, b1: list[np.ndarray], b8: list[np.ndarray], reps: tuple) -> dict:
    """onnxruntime on the CPU execution provider, ``threads`` intra-op threads; inputs in contract order."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    f1, f8 = dict(zip(names, b1)), dict(zip(names, b8))
    return latency_and_throughput(lambda: sess.run(None, f1), lambda: sess.run(None, f8), *reps)


def _brief(f: dict, unit: str = "windows") -> str:
    return (
        f"batch 1 p50 {f['p50_ms']:.2f} ms p95 {f['p95_ms']:.2f} ms; "
        f"batch {THROUGHPUT_BATCH} {f['throughput_b8']:.1f} {unit}/s"
    )


def ort_reference(inproc: dict, default: str = MODEL_NAME) -> tuple[str, dict] | None:
    """The in-process onnxruntime figures the Triton ratios are taken against: the default model's graph."""
    ort_figs = inproc.get("onnxruntime") or {}
    for name in [default, *ort_figs]:
        f = ort_figs.get(name)
        if f is not None:
            f = ort_figs.get(f["same_as"], f) if "same_as" in f else f
            return name, f
    return None


# ------------------------------------------------------------------------------------ Triton


def measure_triton(url: str, models: list[str], concurrency: list[int], prof: dict, args) -> dict:
    """Closed-loop runs per loaded model and the stream run; every result as its ``to_dict()``."""
    from avemo.client.grpc_client import EmotionClient, EmotionClientError

    out: dict = {"models": {}, "skipped": {}, "streams": None}
    for name in models:
        try:
            with EmotionClient(url, name) as client:
                served = client.model()
                windows = make_windows(served)
                for _ in range(prof["warmup"]):  # the first requests load lazily initialised parts
                    client.infer(windows[0].audio, windows[0].frames, windows[0].mask)
        except EmotionClientError as exc:
            out["skipped"][name] = str(exc)
            log(f"[triton] {name} skipped ({exc})")
            continue
        runs = []
        for c, shm in [(c, False) for c in concurrency] + [(c, True) for c in (1, 8) if c in concurrency]:
            log(f"[triton] {name} c={c}{' shm' if shm else ''}: {prof['duration']:g} s ...")
            r = run_concurrency(url, name, c, prof["duration"], shared_memory=shm, windows=windows)
            log(f"[triton]   {summary_line(r)}")
            runs.append(r)
        out["models"][name] = runs
    if args.streams > 0 and out["models"]:
        name = MODEL_NAME if MODEL_NAME in out["models"] else next(iter(out["models"]))
        log(f"[triton] {name}: {args.streams} streams at the real-time hop rate for {prof['stream_seconds']:g} s ...")
        out["streams"] = run_streams(url, name, args.streams, prof["stream_seconds"], pace="realtime")
        log(f"[triton]   {summary_line(out['streams'])}")
    return out


def start_server(repo: Path, log_file: Path):
    """The embedded Triton on ``repo`` (free ports); None and the reason when it cannot start."""
    from avemo.serving.server import ServerPorts, TritonServer, TritonServerError

    server = TritonServer(repo, ServerPorts.free(), log_file=log_file)
    log(f"[triton] starting the embedded server on {repo} (log {log_file}) ...")
    try:
        server.start(timeout=300)
    except TritonServerError as exc:
        return None, str(exc).splitlines()[0]
    return server, None


# ------------------------------------------------------------------------------------ report


def ratios(inproc: dict, triton: dict | None, model_kind: str = "clip", default: str = MODEL_NAME) -> list[dict]:
    """The issue's ratios, each with its target and PASS / MISS (None when a figure is missing)."""
    if model_kind == "features":
        return feat.feature_ratios(ort_reference(inproc, default), triton)
    rows = []

    def add(name: str, value: float | None, op: str, target: float, why: str = "") -> None:
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        rows.append({"name": name, "value": value, "op": op, "target": target, "met": met, "missing": why})

    ref = ort_reference(inproc)
    eager = inproc.get("eager")
    add(
        "onnxruntime in-process speed-up over eager, batch 1 (eager p50 / ORT p50)",
        eager["p50_ms"] / ref[1]["p50_ms"] if ref and eager else None,
        ">=",
        TARGET_ORT_SPEEDUP,
        "" if ref else "no in-process onnxruntime figure",
    )
    for name, runs in (triton or {}).get("models", {}).items():
        for shm in (False, True):  # plain gRPC, and system shared memory (same-host clients)
            by_c = {r.concurrency: r for r in runs if r.shared_memory == shm}
            c1, c8 = by_c.get(1), by_c.get(8)
            if shm and not (c1 or c8):
                continue
            how = " shm" if shm else ""
            p50 = c1.latency_ms.p50 if c1 and c1.latency_ms else None
            add(
                f"Triton gRPC{how} {name} p50 at c=1 / in-process ORT p50",
                p50 / ref[1]["p50_ms"] if ref and p50 else None,
                "<=",
                TARGET_TRITON_OVERHEAD,
                "" if c1 else "no c=1 run",
            )
            add(
                f"Triton{how} {name} throughput at c=8 / in-process ORT best throughput",
                c8.throughput / ref[1]["best_throughput"] if ref and c8 else None,
                ">=",
                TARGET_TRITON_THROUGHPUT,
                "" if c8 else "no c=8 run",
            )
    return rows


def print_report(env: dict, inproc: dict, triton: dict | None, rows: list[dict], skipped: dict) -> None:
    print(f"\n{env['cpu']}, {env['cores']} cores; checkpoint {env['checkpoint']}; repository {env['repository']}")
    print(f"model kind: {env['model_kind']} ({env['model']})\n")
    unit = "samples" if env["model_kind"] == "features" else "windows"
    print("in process (batch 1 latency, batch 8 throughput):\n")
    print(f"| runtime | p50 ms | p95 ms | {unit}/s batch 1 | {unit}/s batch 8 |")
    print("|---|---|---|---|---|")
    table = [("eager PyTorch", inproc.get("eager")), ("TorchScript", inproc.get("torchscript"))]
    table += [(f"onnxruntime ({k})", v) for k, v in (inproc.get("onnxruntime") or {}).items()]
    for name, f in table:
        if f is None:
            print(f"| {name} | skipped ({inproc['skipped'].get('torchscript', '')}) | | | |")
        elif "same_as" in f:
            print(f"| {name} | same graph as {f['same_as']} | | | |")
        else:
            print(
                f"| {name} | {f['p50_ms']:.2f} | {f['p95_ms']:.2f} | {f['throughput_b1']:.1f} "
                f"| {f['throughput_b8']:.1f} |"
            )
    if triton is not None:
        runs = [r for rs in triton["models"].values() for r in rs]
        if triton["streams"] is not None:
            runs.append(triton["streams"])
        if env["model_kind"] == "features":
            print("\nTriton gRPC (closed loop, one sample per request; the windows/s column counts samples):\n")
        else:
            print("\nTriton gRPC (closed loop, one window per request; shm = system shared memory; streams at 1x):\n")
        print(format_table(runs))
        s = triton["streams"]
        if s is not None:
            lag = f", lag p95 {s.lag_ms.p95:.1f} ms" if s.lag_ms else ""
            print(f"\nstreams: {s.streams} x {s.duration_s:.0f} s, {s.windows} windows, {s.errors} errors{lag}")
    for what, why in skipped.items():
        print(f"skipped {what} ({why})")
    print("\nratios (each from this run):")
    for r in rows:
        verdict = "-" if r["met"] is None else ("PASS" if r["met"] else "MISS")
        unit = r.get("unit", "")
        value = f"{r['value']:.2f}{unit}" if r["value"] is not None else f"n/a ({r['missing']})"
        print(f"  {r['name']}: {value} (target {r['op']} {r['target']:g}{unit}) {verdict}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------------ main


def encoder_pairs(args) -> int:
    """Every combination of ``--audio_encoder`` (x ``--audio_layers`` for speech encoders) and ``--video_encoder``,
    measured by ``benchmarks/encoders.py``: in process, Triton, and ``avemo predict`` fast and ``--realtime``."""
    import encoders  # benchmarks/encoders.py

    audio = (args.audio_encoder or "cnn").split(",")
    layers = (args.audio_layers or "0").split(",")
    video = (args.video_encoder or "cnn").split(",")
    pairs = []
    for a in audio:
        for k in layers if a in encoders.SPEECH_ENCODER_NAMES else ["0"]:
            pairs += [f"{a}{':' + k if k != '0' else ''}+{v}" for v in video]
    argv = ["--pairs", ",".join(dict.fromkeys(pairs)), "--threads", str(args.threads)]
    argv += ["--quick"] * args.quick + ["--int8"] * args.int8 + (["--json", str(args.json)] if args.json else [])
    return encoders.main(argv)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, help="the checkpoint the repository was exported from")
    enc = p.add_argument_group(
        "encoder pairs (instead of --checkpoint): benchmarks/encoders.py on random-weight models of these encoders"
    )
    enc.add_argument("--audio_encoder", help="comma-separated audio encoders (cnn, resnet18, wav2vec2_base, ...)")
    enc.add_argument("--audio_layers", help="comma-separated layer counts of the speech encoders (0 = all 12)")
    enc.add_argument("--video_encoder", help="comma-separated video encoders (cnn, resnet18)")
    enc.add_argument("--int8", action="store_true", help="also time int8 dynamic quantisation of each ONNX graph")
    p.add_argument("--model-repository", type=Path, default=Path(MODEL_REPOSITORY), help="(default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke run: few iterations, short runs")
    p.add_argument(
        "--concurrency",
        help=f"closed-loop concurrencies (default: 1,4,8,16; a feature model {feat.DEFAULT_CONCURRENCY})",
    )
    p.add_argument("--duration", type=float, help="seconds per closed-loop run (default: 10; --quick 1.5)")
    p.add_argument("--streams", type=int, default=16, help="concurrent streams of the load run (0 = none)")
    p.add_argument("--stream-seconds", type=float, help="seconds of the stream run (default: 60; --quick 5)")
    p.add_argument("--warmup", type=int, help="warm-up calls before timing (default: 10; --quick 2)")
    p.add_argument("--iters", type=int, help="timed batch-1 calls in process (default: 100; --quick 10)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="in-process threads (cores)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write every figure here")
    args = p.parse_args(argv)
    if args.audio_encoder or args.video_encoder or args.audio_layers:
        return encoder_pairs(args)
    if args.checkpoint is None:
        p.error("give --checkpoint, or --audio_encoder / --video_encoder for the encoder pairs")

    prof = dict(QUICK if args.quick else FULL)
    for key, value in (("duration", args.duration), ("stream_seconds", args.stream_seconds)):
        if value is not None:
            prof[key] = value
    for key, value in (("warmup", args.warmup), ("iters", args.iters)):
        if value is not None:
            prof[key] = value
    repo = args.model_repository.resolve()
    if not args.checkpoint.is_file():
        p.error(f"checkpoint {args.checkpoint} does not exist")
    try:
        model_kind, served_name = feat.checkpoint_kind(args.checkpoint)  # ("clip", "emotion") / ("features", "mosei")
    except ValueError as exc:
        p.error(str(exc))
    default_c = feat.DEFAULT_CONCURRENCY if model_kind == "features" else "1,4,8,16"
    concurrency = [int(x) for x in (args.concurrency or default_c).split(",") if x.strip() and int(x) > 0]
    repo_models = scan_repository(repo) if repo.is_dir() else []
    if not repo_models:
        p.error(f"no model (<model>/config.pbtxt) in {repo}: run `avemo export {args.checkpoint}` first")
    if model_kind == "features":  # only this checkpoint's flavours; a clip model may live beside them
        repo_models = feat.own_models(repo_models, served_name)
    else:
        repo_models = [m for m in repo_models if m.served_kind == "clip"]
    if not repo_models:
        p.error(f"no {model_kind} model {served_name!r} in {repo}: run `avemo export {args.checkpoint}` first")

    env = {
        "cpu": _cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "checkpoint": str(args.checkpoint),
        "repository": str(repo),
        "repository_models": {m.name: m.kind for m in repo_models},
        "model_kind": model_kind,
        "model": served_name,
        "profile": prof,
        "concurrency": concurrency,
    }
    skipped: dict[str, str] = {}
    inproc = measure_in_process(args.checkpoint, repo_models, prof, args.threads)
    skipped.update(inproc["skipped"])
    if model_kind == "features":
        env["model"] = feat.describe(inproc["signature"])

    server, why = start_server(repo, Path(os.environ.get("TMPDIR", "/tmp")) / f"avemo-bench-{os.getpid()}.log")
    triton = None
    if server is None:
        skipped["triton"] = why
        log(f"[triton] skipped ({why})")
    else:
        try:
            ours = {m.name for m in repo_models}
            loaded = [name for name, _ in server.ready_models() if name in ours]
            env["served_models"] = loaded
            lacking = getattr(server, "skipped_models", {})
            for m in repo_models:
                if m.name not in loaded:
                    why = f"no {lacking[m.name]} backend" if m.name in lacking else "not ready"
                    skipped[f"triton {m.name}"] = f"the embedded server did not load it: {why} ({m.kind} flavour)"
            if model_kind == "features":
                triton = feat.measure_triton_features(server.url, loaded, concurrency, prof, log)
                skipped["triton streams"] = feat.STREAMS_SKIPPED
            else:
                triton = measure_triton(server.url, loaded, concurrency, prof, args)
            skipped.update({f"triton {k}": v for k, v in triton["skipped"].items()})
        finally:
            server.stop()
    rows = ratios(inproc, triton, model_kind, served_name)
    print_report(env, inproc, triton, rows, skipped)

    if args.json:
        report = {
            "environment": env,
            "in_process": inproc,
            "triton": None
            if triton is None
            else {
                "models": {k: [r.to_dict() for r in v] for k, v in triton["models"].items()},
                "streams": triton["streams"].to_dict() if triton["streams"] else None,
            },
            "ratios": rows,
            "skipped": skipped,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        log(f"wrote {args.json}")
    errors = sum(r.errors for rs in (triton or {}).get("models", {}).values() for r in rs)
    errors += triton["streams"].errors if triton and triton["streams"] else 0
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
