"""From a RAVDESS-layout folder to window datasets: scan, split, cache, wrap.

``prepare_data`` is what ``train`` and ``evaluate`` call: it reports and skips bad files, checks
that no recording is in two splits, decodes new clips into the cache and returns one
``WindowDataset`` per split (training windows augmented, the others at the client's fixed starts).
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from avemo.contract.geometry import WindowGeometry
from avemo.training.data import ravdess
from avemo.training.data.cache import build_cache
from avemo.training.data.dataset import WindowDataset


def prepare_data(
    data_root: str | Path,
    cache_dir: str | Path,
    geometry: WindowGeometry,
    *,
    num_classes: int = 8,
    split_mode: str = "actor",
    folds: int = 5,
    fold: int = 0,
    seed: int = 0,
    face_crop: str = "auto",
    progress: bool = True,
) -> tuple[dict[str, WindowDataset], dict]:
    """-> ({"train", "val", "test": WindowDataset}, info) where info holds the skipped files
    ("problems"), the actors of each split, and clip and window counts per split. ``face_crop`` is the
    cache's crop method (``contract.media.FACE_CROP_METHODS``): a cache built with another one is not read."""
    items, problems = ravdess.scan(data_root, num_classes=num_classes)
    for p in problems:
        tqdm.write(f"skipped {p.path}: {p.reason}")
    if not items:
        raise SystemExit(f"no usable clips under {data_root} (expected Actor_XX/01-01-EE-II-SS-RR-XX.mp4)")
    splits = ravdess.make_splits(items, split_mode, folds=folds, fold=fold, seed=seed)
    ravdess.check_no_leak(splits)
    cached, cache_problems = build_cache(
        [it.path for it in items], Path(cache_dir), geometry, face_crop=face_crop, progress=progress
    )
    datasets = {}
    for name, split_items in splits.items():
        kept = [it for it in split_items if str(Path(it.path).resolve()) in cached]
        clips = [cached[str(Path(it.path).resolve())] for it in kept]
        datasets[name] = WindowDataset(clips, [it.label for it in kept], geometry, train=(name == "train"), seed=seed)
    info = {
        "problems": [p.to_dict() for p in problems] + cache_problems,
        "split": {k: sorted({it.name.actor for it in v}) for k, v in splits.items()},
        "clips": {k: len(v) for k, v in datasets.items()},
        "windows": {k: len(v.index) for k, v in datasets.items()},
    }
    return datasets, info
