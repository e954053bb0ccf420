"""Loading a MOSEI-size feature file: the pickle straight, the first cached open, the memory-mapped reopen.

    python benchmarks/feature_loading.py [--dir D] [--keep] [--scale 0.25] [--items 1000] [--json]

Writes a synthetic unaligned file of MOSEI's real size (16,326 / 1,871 / 4,659 samples, dims 768 / 74 / 35,
padded lengths 50 / 500 / 375: ~8 GB; ``--scale`` shrinks the sample counts) into ``--dir`` (default a
temporary folder), then measures, each stage in a child process of its own so that its peak resident
memory (``ru_maxrss`` of that child) is its own:

- write: ``write_mmsa_file`` (the streaming generator);
- pickle: ``read_mmsa`` straight from the pickle (what every run would pay without the cache);
- convert: the first ``open_features`` (read_mmsa + writing every array as .npy);
- memmap: the second ``open_features`` (memory maps), a ``FeatureDataset`` over train and ``--items`` random
  items read from it (open and items timed apart);
- baseline: a child that only imports the same modules (numpy, torch, avemo): subtract it from the RSS.

Peak RSS (``ru_maxrss``) counts file-backed pages too: the pages of memory-mapped .npy files that were
touched. Those are page cache (shared between processes, dropped under memory pressure), so each stage
also reports its anonymous and file-backed resident memory at the end (/proc/self/status).

The cache's .npy files were just written, so the memmap stage reads them from the page cache (a warm
start, as on a machine that trains repeatedly). The file and the cache are deleted at the end unless ``--keep``.
The disk needs the file and the cache (~2x the file); the script says so and stops when it has less.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MOSEI_SAMPLES = (16326, 1871, 4659)
DIMS = {"text": 768, "audio": 74, "video": 35}
LENS = {"text": 50, "audio": 500, "video": 375}
STAGES = ("baseline", "write", "pickle", "convert", "memmap")


def file_bytes(samples: tuple[int, ...]) -> int:
    """Bytes of the pickle: float32 features + text_bert, labels and strings (~100 B / sample)."""
    per_sample = sum(LENS[m] * DIMS[m] for m in DIMS) * 4 + 3 * LENS["text"] * 4 + 100
    return sum(samples) * per_sample


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_now_mb() -> dict[str, float]:
    """Current resident memory split into anonymous (the process's own) and file-backed (page cache of
    memory-mapped files: shared, reclaimable) -- ru_maxrss counts both."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                out[f"{key[3:].lower()}_now_mb"] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def child(stage: str, path: Path, cache: Path, samples: tuple[int, int, int], items: int) -> dict:
    """One stage, run inside its own process; returns its timings and peak RSS."""
    import numpy as np
    import torch  # noqa: F401 - the training process has torch loaded: count it in every stage

    from avemo.training.data.feature_cache import open_features
    from avemo.training.data.features import FeatureDataset
    from avemo.training.data.mmsa import read_mmsa
    from avemo.training.synthetic.features import write_mmsa_file

    out: dict = {}
    t0 = time.perf_counter()
    if stage == "write":
        write_mmsa_file(path, "mosei", aligned=False, samples=samples, seed=0)
    elif stage == "pickle":
        read_mmsa(path, "mosei")
    elif stage == "convert":
        open_features(path, cache, dataset="mosei")
    elif stage == "memmap":
        corpus = open_features(path, cache, dataset="mosei")
        out["open_s"] = time.perf_counter() - t0
        ds = FeatureDataset(corpus.splits["train"], ("text", "audio", "video"), "regression")
        t1 = time.perf_counter()
        rng = np.random.default_rng(0)
        for i in rng.integers(0, len(ds), items):
            ds[int(i)]
        out["items_s"] = time.perf_counter() - t1
        out["items_per_s"] = items / out["items_s"]
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = _peak_mb()
    out.update(_rss_now_mb())
    return out


def run_stage(stage: str, path: Path, cache: Path, samples: tuple[int, ...], items: int) -> dict:
    cmd = [sys.executable, __file__, "--child", stage, "--path", str(path), "--cache", str(cache)]
    cmd += ["--samples", *map(str, samples), "--items", str(items)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", type=Path, default=None, help="where the file and the cache go (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the file and the cache")
    p.add_argument("--scale", type=float, default=1.0, help="share of MOSEI's sample counts (e.g. 0.25)")
    p.add_argument("--items", type=int, default=1000, help="random items read in the memmap stage")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    p.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--samples", type=int, nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.path, args.cache, tuple(args.samples), args.items)))
        return 0

    samples = tuple(max(1, round(n * args.scale)) for n in MOSEI_SAMPLES)
    folder = args.dir or Path(tempfile.mkdtemp(prefix="avemo-feature-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    need = 2 * file_bytes(samples) + (1 << 30)  # file + cache + 1 GB of slack
    free = shutil.disk_usage(folder).free
    if free < need:
        print(
            f"feature_loading: needs {need / 1e9:.1f} GB for the file and its cache, {folder} has "
            f"{free / 1e9:.1f} GB free: use --scale 0.25 (or less) or --dir on a larger disk",
            file=sys.stderr,
        )
        return 2
    path, cache = folder / "mosei_unaligned_bench.pkl", folder / "cache"
    results: dict = {"samples": samples, "dir": str(folder)}
    try:
        for stage in STAGES:
            print(f"feature_loading: {stage} ...", file=sys.stderr, flush=True)
            results[stage] = run_stage(stage, path, cache, samples, args.items)
            if stage == "write" and path.exists():
                results["file_gb"] = path.stat().st_size / 1e9
        results["cache_gb"] = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 1e9
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
        elif not args.keep:
            _remove(path, cache)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"MOSEI-size unaligned file: {sum(samples)} samples {samples}, {results.get('file_gb', 0):.2f} GB")
    print(f"{'stage':<10} {'seconds':>9} {'peak RSS MB':>12} {'anon MB at end':>15} {'file MB at end':>15}  notes")
    for stage in STAGES:
        r = results[stage]
        if "error" in r:
            print(f"{stage:<10} failed: {r['error']}")
            continue
        note = f"open {r['open_s']:.2f} s, {args.items} items {r['items_s']:.2f} s" if stage == "memmap" else ""
        anon, file = r.get("anon_now_mb", float("nan")), r.get("file_now_mb", float("nan"))
        print(f"{stage:<10} {r['seconds']:>9.2f} {r['peak_rss_mb']:>12.0f} {anon:>15.0f} {file:>15.0f}  {note}")
    print(f"cache on disk: {results['cache_gb']:.2f} GB")
    return 0


def _remove(path: Path, cache: Path) -> None:
    path.unlink(missing_ok=True)
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
