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

EVAL_SPLITS = ("train", "val", "test", "all")  # what ``prepare_split`` can return ("all": every clip of the root)


def _scan_and_cache(data_root, cache_dir, geometry, num_classes, face_crop, progress) -> tuple[list, dict, list]:
    """Scan the root (reporting skipped files), decode new clips -> (items, cached clips by path, problems)."""
    items, problems = ravdess.scan(data_root, num_classes=num_classes)
    for p in problems:
        tqdm.write(f"skipped {p.path}: {p.reason}")
    if not items:
        raise SystemExit(f"no usable clips under {data_root} (expected Actor_XX/01-01-EE-II-SS-RR-XX.mp4)")
    cached, cache_problems = build_cache(
        [it.path for it in items], Path(cache_dir), geometry, face_crop=face_crop, progress=progress
    )
    return items, cached, [p.to_dict() for p in problems] + cache_problems


def _dataset(items, cached, geometry, train: bool, seed: int, video_augment: str = "basic") -> WindowDataset:
    kept = [it for it in items if str(Path(it.path).resolve()) in cached]
    clips = [cached[str(Path(it.path).resolve())] for it in kept]
    return WindowDataset(
        clips, [it.label for it in kept], geometry, train=train, seed=seed, video_augment=video_augment
    )


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
    video_augment: str = "basic",
    progress: bool = True,
) -> tuple[dict[str, WindowDataset], dict]:
    """-> ({"train", "val", "test": WindowDataset}, info) where info holds the skipped files
    ("problems"), the actors of each split, and clip and window counts per split. ``face_crop`` is the
    cache's crop method (``contract.media.FACE_CROP_METHODS``): a cache built with another one is not read."""
    items, cached, problems = _scan_and_cache(data_root, cache_dir, geometry, num_classes, face_crop, progress)
    splits = ravdess.make_splits(items, split_mode, folds=folds, fold=fold, seed=seed)
    ravdess.check_no_leak(splits)
    datasets = {
        name: _dataset(split_items, cached, geometry, name == "train", seed, video_augment)
        for name, split_items in splits.items()
    }
    info = {
        "problems": problems,
        "split": {k: sorted({it.name.actor for it in v}) for k, v in splits.items()},
        "clips": {k: len(v) for k, v in datasets.items()},
        "windows": {k: len(v.index) for k, v in datasets.items()},
    }
    return datasets, info


def prepare_split(
    data_root: str | Path,
    cache_dir: str | Path,
    geometry: WindowGeometry,
    split: str,
    *,
    num_classes: int = 8,
    split_mode: str = "actor",
    folds: int = 5,
    fold: int = 0,
    seed: int = 0,
    face_crop: str = "auto",
    progress: bool = True,
    **_ignored,
) -> tuple[WindowDataset, dict]:
    """One evaluation dataset (fixed window starts, no augmentation) -> (dataset, info).

    ``split``: "train", "val" or "test" of ``split_mode`` (as ``prepare_data`` makes them), or "all":
    every usable clip under ``data_root`` (a corpus of people the model never saw). Other keyword
    arguments (training-only options of ``TrainConfig.data_options``) are accepted and ignored.
    """
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    items, cached, problems = _scan_and_cache(data_root, cache_dir, geometry, num_classes, face_crop, progress)
    if split != "all":
        splits = ravdess.make_splits(items, split_mode, folds=folds, fold=fold, seed=seed)
        ravdess.check_no_leak(splits)
        items = splits[split]
    ds = _dataset(items, cached, geometry, train=False, seed=seed)
    info = {"problems": problems, "actors": sorted({it.name.actor for it in items}), "clips": len(ds.clips)}
    return ds, info


FEATURE_SPLITS = {"train": "train", "val": "valid", "test": "test"}  # our split name -> MMSA's


def prepare_features(
    data_root: str | Path,
    cache_dir: str | Path,
    dataset: str,
    modalities: tuple[str, ...],
    task: str,
    num_classes: int,
    progress: bool = True,
) -> tuple[dict, dict]:
    """A feature file (MMSA pickle: MOSI / MOSEI / SIMS) -> ({"train", "val", "test": FeatureDataset}, info).

    The file is validated and converted once into a memory-mapped cache under ``cache_dir``
    (``feature_cache.open_features``); info holds the dataset, its feature sizes, padded lengths and
    sample counts, which the trainer stores in the model's config.
    """
    from avemo.training.data.feature_cache import open_features
    from avemo.training.data.features import FeatureDataset

    corpus = open_features(data_root, cache_dir, dataset=dataset, progress=progress)
    datasets = {}
    for ours, theirs in FEATURE_SPLITS.items():
        ds = FeatureDataset(corpus.splits[theirs], modalities, task, num_classes)
        ds.dataset_name = dataset  # the metrics' definitions depend on it (SIMS' label range differs)
        datasets[ours] = ds
    info = {
        "dataset": dataset,
        "feature_file": str(data_root),
        "aligned": corpus.aligned,
        "modalities": list(modalities),
        "input_dims": {m: int(corpus.dims[m]) for m in modalities},
        "seq_lens": {m: int(corpus.seq_lens[m]) for m in modalities},
        "samples": {k: len(v) for k, v in datasets.items()},
        "problems": [],
    }
    return datasets, info
