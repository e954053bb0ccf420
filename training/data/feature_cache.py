"""Memory-mapped cache of validated feature files: convert a pickle once, open it in seconds ever after.

Unpickling MOSEI's ``unaligned_50.pkl`` (~8 GB) takes minutes and as much RAM as the file (more, at
the peak), on every run and in every DDP rank. ``open_features`` reads it once with ``read_mmsa``
(so the cache only ever holds validated arrays) and writes every array as a ``.npy`` file:

    <cache_dir>/features/<name>-<key>/meta.json                name, aligned, dims, seq_lens, label_range,
                                                               source stamp, per-split ids
    <cache_dir>/features/<name>-<key>/<split>/<array>.npy      text / audio / video [N, L, D] float32,
                                                               <modality>_lengths [N] int64, regression [N],
                                                               classes3 [N], unimodal_<modality> [N] (SIMS)
    <cache_dir>/features/<name>-<key>/<split>/raw_text.json

Later calls open the feature arrays with ``np.load(mmap_mode="r")``: nothing is read until a sample is
used, pages are shared between processes (DataLoader workers, DDP ranks) and evicted under memory
pressure. The key hashes the source's size, mtime_ns and SHA-256 of its first and last MiB (not the
whole file: hashing 8 GB would cost what the cache saves), so a replaced file gets a new key; the old
cache of the same source is removed then. The folder is written under a temporary name and renamed,
so an interrupted conversion never leaves a half cache that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from avemo.contract.progress import progress as progress_bar
from avemo.training.data.mmsa import (
    DATASETS,
    MODALITIES,
    MODALITY_KEYS,
    SPLITS,
    FeatureCorpus,
    FeatureSplit,
    read_mmsa,
)
from avemo.training.data.safe_pickle import FeatureFileError

CACHE_VERSION = "1"  # bump when the layout or the validation of read_mmsa changes
EDGE = 1 << 20  # bytes hashed at each end of the source


def source_stamp(path: Path) -> dict:
    """What identifies one version of the source file: size, mtime_ns, SHA-256 of its first and last MiB."""
    try:
        st = path.stat()
        with open(path, "rb") as f:
            head = hashlib.sha256(f.read(EDGE)).hexdigest()
            f.seek(max(0, st.st_size - EDGE))
            tail = hashlib.sha256(f.read(EDGE)).hexdigest()
    except FileNotFoundError:
        raise FeatureFileError(f"{path}: no such feature file") from None
    except OSError as e:
        raise FeatureFileError(f"{path}: cannot read the feature file: {e.strerror or e}") from None
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "head": head, "tail": tail}


def cache_key(stamp: dict) -> str:
    blob = json.dumps(
        {k: stamp[k] for k in ("size", "mtime_ns", "head", "tail")} | {"v": CACHE_VERSION}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _say(message: str, show: bool) -> None:
    if show:
        tqdm.write(message)


def _write(corpus: FeatureCorpus, folder: Path, stamp: dict, key: str, show: bool) -> None:
    """Every array of ``corpus`` + meta.json into ``folder``, through a temporary folder and a rename."""
    tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    arrays = 0
    with progress_bar(total=len(SPLITS), desc=f"cache {corpus.name}", unit="split", disable=not show) as bar:
        for split in SPLITS:
            part, out = corpus.splits[split], tmp / split
            out.mkdir(parents=True)
            named = {m: part.features[m] for m in MODALITIES}
            named |= {f"{m}_lengths": part.lengths[m] for m in MODALITIES}
            named |= {"regression": part.regression, "classes3": part.classes3}
            named |= {f"unimodal_{m}": v for m, v in part.unimodal.items()}
            for name, arr in named.items():
                np.save(out / f"{name}.npy", np.ascontiguousarray(arr))
                arrays += 1
            (out / "raw_text.json").write_text(json.dumps(part.raw_text, ensure_ascii=False))
            bar.update(1)
    meta = {
        "version": CACHE_VERSION,
        "key": key,
        "name": corpus.name,
        "aligned": corpus.aligned,
        "label_range": corpus.label_range,
        "dims": corpus.dims,
        "seq_lens": corpus.seq_lens,
        "source": stamp,
        "splits": {s: {"n": len(corpus.splits[s]), "unimodal": sorted(corpus.splits[s].unimodal)} for s in SPLITS},
        "ids": {s: corpus.splits[s].ids for s in SPLITS},
    }
    (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False))
    try:
        os.rename(tmp, folder)
    except OSError:  # another process (a DDP rank) finished the same conversion first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "meta.json").is_file():
            raise
    _say(f"features: cached {arrays} arrays of {corpus.path} in {folder}", show)


def _open(folder: Path, source: Path) -> FeatureCorpus:
    """The cached corpus: feature arrays as read-only memory maps, the small ones in memory."""
    meta = json.loads((folder / "meta.json").read_text())
    splits = {}
    for split in SPLITS:
        part = folder / split
        splits[split] = FeatureSplit(
            features={m: np.load(part / f"{m}.npy", mmap_mode="r") for m in MODALITIES},  # np.memmap [N, L_m, D_m]
            lengths={m: np.load(part / f"{m}_lengths.npy") for m in MODALITIES},  # int64 [N]
            regression=np.load(part / "regression.npy"),  # float32 [N]
            classes3=np.load(part / "classes3.npy"),  # int64 [N]
            ids=list(meta["ids"][split]),
            raw_text=json.loads((part / "raw_text.json").read_text()),
            unimodal={m: np.load(part / f"unimodal_{m}.npy") for m in meta["splits"][split]["unimodal"]},
            label_range=float(meta["label_range"]),
        )
    return FeatureCorpus(
        name=meta["name"],
        path=source,
        aligned=bool(meta["aligned"]),
        splits=splits,
        dims={m: int(meta["dims"][m]) for m in MODALITIES},
        seq_lens={m: int(meta["seq_lens"][m]) for m in MODALITIES},
        label_range=float(meta["label_range"]),
    )


def _check_dataset(corpus: FeatureCorpus, dataset: str) -> None:
    """The check read_mmsa makes for ``dataset``, on a corpus opened from the cache (same message)."""
    name = dataset.lower()
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: one of {', '.join(DATASETS)}")
    for modality, want in DATASETS[name].dims.items():
        if corpus.dims[modality] != want:
            raise FeatureFileError(
                f"{corpus.path}: split 'train', key '{MODALITY_KEYS[modality]}': "
                f"expected {want} {modality} features for {name}, found {corpus.dims[modality]}"
            )


def _drop_stale(root: Path, keep: Path, source: str) -> None:
    """Remove older caches of the same source path (a replaced file would otherwise leave GBs behind)."""
    for folder in root.iterdir():
        if folder == keep or folder.name.startswith(".") or not (folder / "meta.json").is_file():
            continue
        try:
            if json.loads((folder / "meta.json").read_text())["source"]["path"] == source:
                shutil.rmtree(folder, ignore_errors=True)
        except (OSError, ValueError, KeyError, TypeError):
            continue


def open_features(
    path: str | Path, cache_dir: str | Path, dataset: str | None = None, progress: bool = False
) -> FeatureCorpus:
    """The validated corpus of ``path``, converted into ``cache_dir`` on first use, memory-mapped afterwards.

    Raises ``FeatureFileError`` (file problems, dims that are not ``dataset``'s) like ``read_mmsa``.
    """
    path = Path(path)
    stamp = source_stamp(path)
    key = cache_key(stamp)
    root = Path(cache_dir) / "features"
    cached = [f for f in sorted(root.glob(f"*-{key}")) if (f / "meta.json").is_file()] if root.is_dir() else []
    if cached:
        corpus = _open(cached[0], path)
        if dataset is not None:
            _check_dataset(corpus, dataset)
        return corpus
    _say(f"features: reading {path} ({stamp['size'] / 1e9:.2f} GB) once into the cache {root}", progress)
    corpus = read_mmsa(path, dataset)
    folder = root / f"{corpus.name}-{key}"
    root.mkdir(parents=True, exist_ok=True)
    _write(corpus, folder, stamp, key, progress)
    del corpus  # the in-memory arrays: from here on the memory maps serve
    _drop_stale(root, folder, stamp["path"])
    return _open(folder, path)
