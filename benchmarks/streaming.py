"""Streaming pipeline speed and memory on long 720p / 1080p clips, figures and ratios from one run.

    python benchmarks/streaming.py [--durations 30,120,600] [--sizes 720p,1080p] [--quick]
                                   [--repository model_repository | --url HOST:8001] [--json-out F]

Generates H.264 + AAC MP4 clips (30 fps: a moving cartoon face that talks over a scrolling textured
background with sensor-like noise, and a voice-like audio track), frame by frame, never holding a clip
in memory; they are cached in ``--clips-dir`` and reused. For each clip it measures, each in a child
process of its own (so peak memory is that process's own, from ``wait4``):

- decode-only: demux + decode + resample + frame sampling to RGB (``contract.stream.decode_only``),
  no face crop, no windows, no server;
- the full pipeline: ``avemo predict CLIP --json`` (decode + face crop + windows + inference through
  Triton over one gRPC stream): process wall time, the pipeline's own wall time and time to first
  answer (from its JSON), real-time factor (wall / clip duration), windows/s, peak resident memory;
- for the shortest 720p clip, ``avemo predict --realtime`` (the file paced at 1x like a live source):
  lag from a window's last media sample to its answer, p50 / p95 / max.

Then the ratio of peak memory on the longest vs the shortest clip of each size (flat = about 1),
and each figure against its target. The server is the embedded Triton started on ``--repository``
(the demo's exported model by default), or a running one at ``--url``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from avemo.contract.endpoint import MODEL_NAME, MODEL_REPOSITORY
from avemo.contract.faces import FACE_CROP_METHODS

SIZES = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080)}
FPS = 30
AUDIO_RATE = 48_000
AUDIO_FRAME = 1024  # AAC frame size
GENERATOR_VERSION = 1  # part of the cached file names: bump when the generator changes
# targets the figures are reported against
TARGET_RSS_MB = 600.0  # peak RSS of `avemo predict` on a 600 s 1080p clip, and flat in clip length
TARGET_LAG_P95_MS = 150.0  # --realtime, 720p: last media sample -> answer
TARGET_RTF_720P = 0.25  # full pipeline, 720p 30 fps


# ------------------------------------------------------------------------------------ clip generation


class _Scene:
    """Draws frame i of a clip: scrolling texture, a head on a Lissajous path whose mouth follows the voice."""

    def __init__(self, width: int, height: int, seed: int):
        import cv2

        self.cv2 = cv2
        self.w, self.h = width, height
        rng = np.random.default_rng(seed)
        pad = max(width, height) // 4
        self.pad = pad
        # background: smooth colour blobs + fine texture, larger than the frame so it can scroll
        bw, bh = width + 2 * pad, height + 2 * pad
        low = rng.integers(40, 200, size=(bh // 64 + 2, bw // 64 + 2, 3)).astype(np.uint8)
        bg = cv2.resize(low, (bw, bh), interpolation=cv2.INTER_CUBIC)
        fine = rng.integers(0, 48, size=(bh // 4 + 1, bw // 4 + 1, 1)).astype(np.uint8)
        fine_full = cv2.resize(fine, (bw, bh), interpolation=cv2.INTER_NEAREST)[..., None]
        self.background = cv2.add(bg, np.repeat(fine_full, 3, axis=2))
        # sensor-like noise: a few full-frame tiles, one per frame in turn (random draws per frame are slow)
        self.noise = [rng.integers(0, 14, size=(height, width, 3), dtype=np.uint8) for _ in range(4)]
        self.skin = tuple(int(v) for v in np.clip(np.array([224, 172, 140]) + rng.integers(-15, 16, 3), 0, 255))
        self.head = 0.22 * height  # head half-height (px)

    def frame(self, i: int, mouth: float) -> np.ndarray:
        cv2, w, h, pad = self.cv2, self.w, self.h, self.pad
        t = i / FPS
        ox = int(pad + pad * 0.9 * math.sin(2 * math.pi * t / 17.0))
        oy = int(pad + pad * 0.9 * math.sin(2 * math.pi * t / 23.0 + 1.0))
        img = np.ascontiguousarray(self.background[oy : oy + h, ox : ox + w])
        img = cv2.add(img, self.noise[i % len(self.noise)])
        # the head wanders over the middle of the frame and sways
        cx = int(w / 2 + 0.18 * w * math.sin(2 * math.pi * t / 7.0))
        cy = int(h / 2 + 0.10 * h * math.sin(2 * math.pi * t / 5.0 + 0.5))
        b = self.head * (1 + 0.08 * math.sin(2 * math.pi * t / 11.0))
        a = 0.78 * b
        angle = 8 * math.sin(2 * math.pi * t / 3.0)
        dark = (35, 25, 20)
        aa = cv2.LINE_AA
        cv2.ellipse(img, (cx, int(cy - 0.55 * b)), (int(1.05 * a), int(0.6 * b)), angle, 180, 360, dark, -1, aa)
        cv2.ellipse(img, (cx, cy), (int(a), int(b)), angle, 0, 360, self.skin, -1, aa)
        blink = 0.15 if (i % 97) < 4 else 1.0
        for side in (-1, 1):
            ex, ey = int(cx + side * 0.38 * a), int(cy - 0.12 * b)
            eye = (int(0.2 * a), max(1, int(0.11 * b * blink)))
            cv2.ellipse(img, (ex, ey), eye, angle, 0, 360, (250, 250, 250), -1, aa)
            cv2.circle(img, (ex, ey), max(1, int(0.08 * b * blink)), dark, -1, aa)
            cv2.line(img, (ex - int(0.2 * a), ey - int(0.22 * b)), (ex + int(0.2 * a), ey - int(0.25 * b)), dark, 4, aa)
        cv2.line(img, (cx, int(cy - 0.02 * b)), (cx - int(0.06 * a), int(cy + 0.2 * b)), (120, 80, 60), 3, aa)
        mw, mh = int(0.38 * a), max(2, int(0.04 * b + 0.18 * b * mouth))
        cv2.ellipse(img, (cx, int(cy + 0.5 * b)), (mw, mh), angle, 0, 360, (110, 30, 40), -1, aa)
        return img


class _Voice:
    """A voice-like signal chunk by chunk: harmonics of a gliding f0 shaped by two formants, in syllables."""

    def __init__(self, seed: int, rate: int = AUDIO_RATE):
        self.rate = rate
        self.rng = np.random.default_rng(seed + 1)
        self.phase = 0.0
        self.n = 0
        self.k = np.arange(1, 31)[:, None]  # harmonics

    def envelope(self, t: np.ndarray) -> np.ndarray:
        syll = np.abs(np.sin(np.pi * 4.0 * t)) ** 0.7  # 4 syllables / s
        phrase = (np.sin(2 * np.pi * t / 6.0) > -0.6).astype(np.float64)  # a pause every 6 s
        return syll * phrase

    def chunk(self, n: int) -> np.ndarray:
        t = (self.n + np.arange(n)) / self.rate
        f0 = 150 + 30 * np.sin(2 * np.pi * 0.3 * t) + 8 * np.sin(2 * np.pi * 5.5 * t)
        phase = self.phase + 2 * np.pi * np.cumsum(f0) / self.rate
        self.phase = float(phase[-1] % (2 * np.pi))
        self.n += n
        harm = self.k * f0[None, :]
        f1 = 550 + 250 * np.sin(2 * np.pi * 2.0 * t)  # moving vowel formants
        f2 = 1600 + 500 * np.sin(2 * np.pi * 1.3 * t + 1.0)
        amp = np.exp(-(((harm - f1) / 180.0) ** 2)) + 0.6 * np.exp(-(((harm - f2) / 260.0) ** 2)) + 0.02
        voiced = (amp * np.sin(self.k * phase[None, :])).sum(axis=0)
        sig = self.envelope(t) * (0.12 * voiced + 0.01 * self.rng.standard_normal(n))
        return np.clip(sig, -1.0, 1.0).astype(np.float32)


def clip_path(clips_dir: Path, size: str, seconds: int) -> Path:
    return Path(clips_dir) / f"bench_{size}_{seconds}s_{FPS}fps_v{GENERATOR_VERSION}.mp4"


def generate_clip(path: Path, size: str, seconds: int, seed: int = 0) -> float:
    """Write the clip (atomically) frame by frame; returns the seconds it took."""
    import av

    width, height = SIZES[size]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    t0 = time.perf_counter()
    scene, voice = _Scene(width, height, seed), _Voice(seed)
    n_frames = seconds * FPS
    n_samples = seconds * AUDIO_RATE
    try:
        with av.open(str(tmp), "w", format="mp4") as out:
            vs = out.add_stream("libx264", rate=Fraction(FPS), options={"crf": "23", "preset": "veryfast"})
            vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
            aus = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
            aus.bit_rate = 128_000
            a_sent = 0
            for i in range(n_frames):
                # audio up to this frame's end, in AAC-sized frames (the mouth opens with the voice)
                want = min(n_samples, int(round((i + 1) * AUDIO_RATE / FPS)))
                level = 0.0
                while a_sent < want:
                    n = min(AUDIO_FRAME, n_samples - a_sent)
                    pcm = voice.chunk(n)
                    level = max(level, float(np.abs(pcm).max()) * 4)
                    stereo = np.ascontiguousarray(np.stack([pcm, 0.9 * pcm]))
                    af = av.AudioFrame.from_ndarray(stereo, format="fltp", layout="stereo")
                    af.sample_rate, af.pts = AUDIO_RATE, a_sent
                    out.mux(aus.encode(af))
                    a_sent += n
                vf = av.VideoFrame.from_ndarray(scene.frame(i, min(1.0, level)), format="rgb24")
                vf.pts = i
                out.mux(vs.encode(vf))
            out.mux(vs.encode())
            out.mux(aus.encode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------ measuring


# A small intermediate process runs the measured command and reports its child's peak RSS
# (RUSAGE_CHILDREN). Measuring a direct child of this process would not do: on Linux a child's ru_maxrss
# starts at the RSS of the process it was forked from (this one, hundreds of MB after making clips).
_MEASURE = r"""
import json, resource, subprocess, sys
rc = subprocess.run(sys.argv[2:]).returncode
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}, f)
"""


def run_child(cmd: list[str]) -> dict:
    """Run ``cmd``: its wall time, exit code, stdout / stderr and its own peak RSS (MB)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rusage.json"
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-c", _MEASURE, str(report), *cmd], stdout=fo, stderr=fe, start_new_session=True
            )
            try:
                proc.wait()
            except BaseException:  # interrupted: the measured command goes too, not just the intermediate
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
            wall = time.perf_counter() - t0
        usage = json.loads(report.read_text()) if report.is_file() else {"rc": proc.returncode, "maxrss_kb": 0}
        return {
            "rc": usage["rc"],
            "wall_s": wall,  # includes starting the small intermediate interpreter (~20 ms)
            "peak_rss_mb": usage["maxrss_kb"] / 1024.0,  # Linux reports KiB
            "stdout": out.read_text(errors="replace"),
            "stderr": err.read_text(errors="replace"),
        }


_DECODE_ONLY = r"""
import json, sys
from avemo.contract.geometry import WindowGeometry
from avemo.contract.stream import decode_only
g = WindowGeometry.from_dict(json.loads(sys.argv[2]))
print(json.dumps(decode_only(sys.argv[1], g)))
"""


def decode_only_run(path: Path, geometry) -> dict:
    res = run_child([sys.executable, "-c", _DECODE_ONLY, str(path), json.dumps(geometry.to_dict())])
    if res["rc"] != 0:
        raise RuntimeError(f"decode-only run failed ({res['rc']}):\n{res['stderr'][-3000:]}")
    out = json.loads(res["stdout"].strip().splitlines()[-1])
    return {"seconds": out["seconds"], "process_wall_s": res["wall_s"], "peak_rss_mb": res["peak_rss_mb"]}


def avemo_command() -> list[str]:
    exe = Path(sys.executable).with_name("avemo")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "avemo.cli"]


def predict_run(path: Path, url: str, model: str, realtime: bool = False, face_crop: str = "auto") -> dict:
    cmd = [*avemo_command(), "predict", str(path), "--url", url, "--model", model, "--json", "--face-crop", face_crop]
    if realtime:
        cmd.append("--realtime")
    res = run_child(cmd)
    if res["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res['rc']}):\n{res['stderr'][-3000:]}")
    preds = json.loads(res["stdout"])
    pred = preds[0] if isinstance(preds, list) else preds
    timeline = pred.get("timeline", [])
    lags = [w["lag_ms"] for w in timeline if w.get("lag_ms") is not None]
    return {
        "process_wall_s": res["wall_s"],
        "pipeline_wall_s": pred.get("wall_s"),
        "first_answer_s": pred.get("first_answer_s"),
        "peak_rss_mb": res["peak_rss_mb"],
        "windows": pred.get("windows", len(timeline)),
        "duration": pred.get("duration"),
        "crop_method": pred.get("crop_method"),
        "latency_ms": pred.get("latency_ms"),
        "lag_ms": _stats(lags),
    }


def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    a = np.asarray(values, np.float64)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "max": float(a.max())}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt(x, spec: str = ".2f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


# ------------------------------------------------------------------------------------ main


def _parse_list(text: str, kind) -> list:
    return [kind(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--durations", default="30,120,600", help="clip lengths in seconds (default: %(default)s)")
    p.add_argument("--sizes", default="720p,1080p", help=f"of {', '.join(SIZES)} (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke run: 30 s clips only (overrides --durations)")
    p.add_argument("--clips-dir", type=Path, default=Path("cache/bench_clips"), help="(default: %(default)s)")
    p.add_argument("--repository", type=Path, default=Path(MODEL_REPOSITORY), help="(default: %(default)s)")
    p.add_argument("--url", help="a running Triton's gRPC address (default: start the embedded one)")
    p.add_argument("--model", default=MODEL_NAME, help="served model name (default: %(default)s)")
    p.add_argument("--face-crop", default="auto", choices=FACE_CROP_METHODS, help="(default: %(default)s)")
    p.add_argument("--no-realtime", action="store_true", help="skip the --realtime lag run")
    p.add_argument("--generate-only", action="store_true", help="make the clips and stop")
    p.add_argument("--json-out", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    durations = [30] if args.quick else _parse_list(args.durations, int)
    sizes = _parse_list(args.sizes, str)
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or not durations or min(durations) <= 0:
        p.error(f"sizes must be among {list(SIZES)} (got {unknown}) and durations positive (got {durations})")

    if args.url is None and not args.generate_only:  # before spending minutes on clips
        from avemo.serving.server import models_in_repository

        if not args.repository.is_dir() or not models_in_repository(args.repository):
            print(
                f"error: no exported model in '{args.repository}' (expected <model>/config.pbtxt): run `make demo`, "
                "or `avemo export runs/gated/best.pt` after training, or pass --url of a running server",
                file=sys.stderr,
            )
            return 2

    # 1. clips (cached)
    clips = {}
    generation = {}
    for size in sizes:
        for seconds in durations:
            path = clip_path(args.clips_dir, size, seconds)
            if not path.is_file():
                print(f"generating {path} ({size}, {seconds} s, {FPS} fps) ...", flush=True)
                generation[f"{size}/{seconds}"] = took = generate_clip(path, size, seconds)
                mb = path.stat().st_size / 1e6
                print(f"  {took:.1f} s ({seconds / took:.2f}x real time), {mb:.1f} MB", flush=True)
            else:
                print(f"using {path} (cached; delete it to regenerate)")
            clips[(size, seconds)] = path
    if args.generate_only:
        return 0

    # 2. the server (SIGTERM unwinds like Ctrl-C, so the embedded server is stopped, not orphaned)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    server = None
    url = args.url
    if url is None:
        from avemo.serving.server import ServerPorts, TritonServer, TritonServerError

        repo = args.repository
        server = TritonServer(repo, ServerPorts.free())
        print(f"starting the embedded Triton on {repo.resolve()} ...", flush=True)
        try:
            server.start(timeout=180)
        except TritonServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        url = server.url

    try:
        from avemo.client.grpc_client import EmotionClient

        with EmotionClient(url, args.model) as client:
            served = client.model()
        g = served.geometry
        env = {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "model": f"{served.name} v{served.version}",
            "fusion": served.parameters.get("fusion"),
            "geometry": g.to_dict(),
            "server": "embedded" if server is not None else url,
        }
        print(
            f"model {env['model']} ({env['fusion']}) at {url}; windows {g.window_seconds:g} s / hop "
            f"{g.hop_seconds:g} s; {env['cores']} cores\n",
            flush=True,
        )

        # 3. per clip: decode-only, then the full pipeline
        rows = []
        for (size, seconds), path in clips.items():
            print(f"{size} {seconds} s: decode-only ...", end=" ", flush=True)
            dec = decode_only_run(path, g)
            print(f"{dec['seconds']:.1f} s; full pipeline ...", end=" ", flush=True)
            full = predict_run(path, url, args.model, face_crop=args.face_crop)
            wall = full["pipeline_wall_s"] if full["pipeline_wall_s"] is not None else full["process_wall_s"]
            row = {
                "size": size,
                "seconds": seconds,
                "clip": str(path),
                "clip_mb": path.stat().st_size / 1e6,
                "decode_only_s": dec["seconds"],
                "decode_only_rtf": dec["seconds"] / seconds,
                "decode_only_rss_mb": dec["peak_rss_mb"],
                "pipeline_s": wall,
                "process_s": full["process_wall_s"],
                "rtf": wall / seconds,
                "first_answer_s": full["first_answer_s"],
                "windows": full["windows"],
                "windows_per_s": full["windows"] / wall if wall else None,
                "peak_rss_mb": full["peak_rss_mb"],
                "latency_ms": full["latency_ms"],
                "crop_method": full["crop_method"],
            }
            rows.append(row)
            print(f"{wall:.1f} s (RTF {row['rtf']:.3f}), peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)

        realtime = None
        rt_clip = min((k for k in clips if k[0] == "720p"), default=None, key=lambda k: k[1])
        if rt_clip is not None and not args.no_realtime:
            print(f"720p {rt_clip[1]} s --realtime (paced at 1x) ...", end=" ", flush=True)
            rt = predict_run(clips[rt_clip], url, args.model, realtime=True, face_crop=args.face_crop)
            realtime = {"size": rt_clip[0], "seconds": rt_clip[1], **rt}
            print(f"{rt['process_wall_s']:.1f} s", flush=True)
    finally:
        if server is not None:
            server.stop()

    # 4. report
    print()
    print(
        "| clip | clip MB | decode-only s | decode-only RTF | pipeline s | RTF | process s | first answer s "
        "| windows/s | peak RSS MB | decode-only RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} {r['seconds']} s | {r['clip_mb']:.0f} | {r['decode_only_s']:.1f} | "
            f"{r['decode_only_rtf']:.3f} | {r['pipeline_s']:.1f} | {r['rtf']:.3f} | {r['process_s']:.1f} | "
            f"{_fmt(r['first_answer_s'])} | "
            f"{_fmt(r['windows_per_s'], '.1f')} | {r['peak_rss_mb']:.0f} | {r['decode_only_rss_mb']:.0f} |"
        )
    print(
        "\npipeline s: `avemo predict` from opening the clip to the last answer (its JSON wall_s); RTF = pipeline s / "
        "clip seconds; process s: the whole command, interpreter start-up included; first answer: from opening "
        "the clip; peak RSS: the process's own maximum resident set (getrusage of a waited child)"
    )
    flat = {}
    for size in sizes:
        mine = sorted((r for r in rows if r["size"] == size), key=lambda r: r["seconds"])
        if len(mine) >= 2:
            lo, hi = mine[0], mine[-1]
            flat[size] = hi["peak_rss_mb"] / lo["peak_rss_mb"]
            print(
                f"\npeak RSS {size}: {hi['seconds']} s / {lo['seconds']} s = {hi['peak_rss_mb']:.0f} / "
                f"{lo['peak_rss_mb']:.0f} MB = {flat[size]:.2f}x (flat = 1.00x)"
            )
    if realtime is not None:
        lag = realtime["lag_ms"]
        print(
            f"\n--realtime {realtime['size']} {realtime['seconds']} s: lag (last media sample -> answer) "
            + (f"p50 {lag['p50']:.0f} ms, p95 {lag['p95']:.0f} ms, max {lag['max']:.0f} ms" if lag else "not reported")
            + f"; first answer {_fmt(realtime['first_answer_s'])} s"
        )

    print("\ntargets:")
    checks = []
    big = [r for r in rows if r["size"] == "1080p"]
    if big:
        r = max(big, key=lambda r: r["seconds"])
        checks.append((f"peak RSS, 1080p {r['seconds']} s", r["peak_rss_mb"], TARGET_RSS_MB, "MB"))
    for size, ratio in flat.items():
        checks.append((f"peak RSS longest / shortest, {size}", ratio, 1.25, "x"))
    if realtime is not None and realtime["lag_ms"]:
        checks.append(("--realtime 720p lag p95", realtime["lag_ms"]["p95"], TARGET_LAG_P95_MS, "ms"))
    for r in rows:
        if r["size"] == "720p":
            checks.append(
                (f"RTF 720p {r['seconds']} s (decode-only {r['decode_only_rtf']:.3f})", r["rtf"], TARGET_RTF_720P, "")
            )
    for name, value, target, unit in checks:
        ok = "ok" if value <= target else "MISSED"
        print(f"  {name}: {value:.3g}{unit} (target <= {target:g}{unit}) {ok}")

    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "environment": env,
            "generation_s": generation,
            "clips": rows,
            "realtime": realtime,
            "rss_ratio_longest_shortest": flat,
            "targets": [{"name": n, "value": v, "target": t, "unit": u, "met": v <= t} for n, v, t, u in checks],
        }
        args.json_out.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
