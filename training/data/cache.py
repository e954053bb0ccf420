"""Training cache of decoded clips, built once with the shared media module and reused.

The cache stores whole decoded clips (audio [N] float32 at 16 kHz, frames [T, 112, 112, 3] uint8 at
the geometry's fps); windows are cut at load time with ``contract.media.window_arrays`` -- the same
primitive the client uses -- so training and serving never disagree on geometry.

Layout: ``<cache_dir>/<key>/`` where key hashes the geometry, face-crop mode and decoder version;
``manifest.json`` lists every clip (source size + mtime, crop method, duration) and every problem.
A clip whose source file is unchanged is never decoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from avemo.contract import media
from avemo.contract.geometry import WindowGeometry
from avemo.contract.progress import progress as progress_bar

CACHE_VERSION = (
    "4"  # 4: causal face tracking with search until the first face (contract.faces), windows cut by contract.stream
)


@dataclass
class CachedClip:
    source: str  # path of the media file
    npz: str  # path of the cached arrays
    duration: float  # seconds
    crop_method: str  # "haar", "center" or "mixed"
    has_audio: bool
    has_video: bool


def cache_key(geometry: WindowGeometry, face_crop: str) -> str:
    blob = json.dumps(
        {"geometry": geometry.to_dict(), "face_crop": face_crop, "version": CACHE_VERSION}, sort_keys=True
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _decode_one(args: tuple[str, str, dict, str]) -> dict:
    source, npz, geometry_dict, face_crop = args
    try:
        clip = media.decode_clip(source, WindowGeometry.from_dict(geometry_dict), face_crop=face_crop)
        tmp = npz + ".tmp.npz"
        np.savez(tmp, audio=clip.audio, frames=clip.frames)
        os.replace(tmp, npz)
        return {
            "source": source,
            "npz": npz,
            "duration": float(clip.duration),
            "crop_method": clip.crop_method,
            "has_audio": bool(clip.has_audio),
            "has_video": bool(clip.has_video),
            **_stamp(Path(source)),
        }
    except Exception as e:  # noqa: BLE001 - one bad clip must never end the run
        return {"source": source, "error": f"{type(e).__name__}: {e}"}


def build_cache(
    sources: list[Path],
    cache_dir: Path,
    geometry: WindowGeometry,
    *,
    face_crop: str = "auto",
    jobs: int = 2,
    progress: bool = True,
) -> tuple[dict[str, CachedClip], list[dict]]:
    """Decode every source not already cached. Returns ({source: CachedClip}, problems).

    problems: [{"path": ..., "reason": ...}] for clips that could not be decoded (they are skipped).
    """
    if face_crop not in media.FACE_CROP_METHODS:  # else every clip would fail to decode, one by one
        raise ValueError(f"face_crop must be one of {', '.join(media.FACE_CROP_METHODS)}, got {face_crop!r}")
    root = Path(cache_dir) / cache_key(geometry, face_crop)
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"clips": {}}
    clips: dict[str, dict] = manifest.get("clips", {})
    todo = []
    for src in sources:
        src = Path(src)
        key = str(src.resolve())
        entry = clips.get(key)
        if (
            entry
            and src.exists()
            and entry.get("size") == _stamp(src)["size"]
            and entry.get("mtime_ns") == _stamp(src)["mtime_ns"]
            and Path(entry["npz"]).exists()
        ):
            continue
        npz = root / (hashlib.sha1(key.encode()).hexdigest()[:16] + ".npz")
        todo.append((key, str(npz), geometry.to_dict(), face_crop))
    problems: list[dict] = []
    if todo:
        bar = progress_bar(total=len(todo), desc="cache: decoding clips", unit="clip", disable=not progress)
        if jobs > 1 and len(todo) > 1:
            with get_context("spawn").Pool(jobs) as pool:
                results = pool.imap_unordered(_decode_one, todo, chunksize=4)
                for r in results:
                    _record(r, clips, problems)
                    bar.update()
        else:
            for t in todo:
                _record(_decode_one(t), clips, problems)
                bar.update()
        bar.close()
        tmp = manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"geometry": geometry.to_dict(), "face_crop": face_crop, "clips": clips}, indent=1))
        os.replace(tmp, manifest_path)
    wanted = {str(Path(s).resolve()) for s in sources}
    failed = {p["path"] for p in problems}
    out = {
        k: CachedClip(k, v["npz"], v["duration"], v["crop_method"], v["has_audio"], v["has_video"])
        for k, v in clips.items()
        if k in wanted and k not in failed
    }
    return out, problems


def _record(result: dict, clips: dict, problems: list) -> None:
    if "error" in result:
        problems.append({"path": result["source"], "reason": result["error"]})
        clips.pop(result["source"], None)
        tqdm.write(f"skipped {result['source']}: {result['error']}")
    else:
        clips[result["source"]] = result


def load_clip_arrays(clip: CachedClip) -> tuple[np.ndarray, np.ndarray]:
    """(audio [N] float32, frames [T, 112, 112, 3] uint8) of a cached clip."""
    with np.load(clip.npz) as z:
        return z["audio"], z["frames"]
