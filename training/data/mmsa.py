"""MMSA sentiment feature files (CMU-MOSI, CMU-MOSEI, CH-SIMS): read, validate, normalise.

MMSA publishes its features as one pickle per dataset and alignment (``aligned_50.pkl``,
``unaligned_50.pkl``): ``{"train" | "valid" | "test": {key: array or list}}`` with BERT ``text``
[N, L, 768], ``text_bert`` [N, 3, L] (token ids, attention mask, segment ids), ``audio`` [N, La, Da],
``vision`` [N, Lv, Dv], ``audio_lengths`` / ``vision_lengths`` (unaligned files only),
``regression_labels`` [N], ``classification_labels`` [N], ``annotations``, ``id``, ``raw_text``.

``read_mmsa`` loads such a file with the restricted unpickler (a downloaded pickle is untrusted code),
checks every array once -- shapes, sample counts, dims against the dataset's table, NaN / inf, label
ranges, lengths -- and returns a ``FeatureCorpus`` in our names (modalities text / audio / video;
MMSA calls video "vision"), float32 features with MMSA's ``-inf`` audio entries set to 0, as MMSA's
own loader does. Every problem is one ``FeatureFileError`` naming file, split, key, expected and found,
so a bad download is explained in one line instead of failing deep inside a training step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avemo.training.data.safe_pickle import FeatureFileError, safe_load

MODALITIES = ("text", "audio", "video")  # our names, in the canonical order
MODALITY_KEYS = {"text": "text", "audio": "audio", "video": "vision"}  # our modality -> MMSA's key
SPLITS = ("train", "valid", "test")
REQUIRED_KEYS = ("text", "audio", "vision", "regression_labels", "id", "raw_text")  # what MMSA's own loader reads
UNIMODAL_KEYS = {"text": "regression_labels_T", "audio": "regression_labels_A", "video": "regression_labels_V"}
CHUNK = 1024  # samples checked at a time: bounded temporaries on MOSEI-size arrays


@dataclass(frozen=True)
class DatasetSpec:
    """The public facts of one MMSA dataset (dims and lengths of MMSA's released feature files)."""

    dims: dict[str, int]  # modality -> features per step
    unaligned_lens: dict[str, int]  # modality -> padded steps in unaligned_50.pkl
    aligned_lens: dict[str, int]  # modality -> padded steps in aligned_50.pkl (word-aligned: 50 each)
    label_range: float  # regression labels lie in [-label_range, label_range]
    split_sizes: dict[str, int]  # split -> samples
    language: str


_ALIGNED_50 = {"text": 50, "audio": 50, "video": 50}
DATASETS: dict[str, DatasetSpec] = {
    "mosi": DatasetSpec(
        dims={"text": 768, "audio": 5, "video": 20},
        unaligned_lens={"text": 50, "audio": 500, "video": 375},
        aligned_lens=_ALIGNED_50,
        label_range=3.0,
        split_sizes={"train": 1284, "valid": 229, "test": 686},
        language="en",
    ),
    "mosei": DatasetSpec(
        dims={"text": 768, "audio": 74, "video": 35},
        unaligned_lens={"text": 50, "audio": 500, "video": 375},
        aligned_lens=_ALIGNED_50,
        label_range=3.0,
        split_sizes={"train": 16326, "valid": 1871, "test": 4659},
        language="en",
    ),
    "sims": DatasetSpec(
        dims={"text": 768, "audio": 33, "video": 709},
        unaligned_lens={"text": 39, "audio": 400, "video": 55},
        aligned_lens=_ALIGNED_50,
        label_range=1.0,
        split_sizes={"train": 1368, "valid": 456, "test": 457},
        language="zh",
    ),
}


@dataclass
class FeatureSplit:
    """One split, validated. ``lengths`` are the valid (unpadded) steps, clamped to >= 1: a sample with no
    valid step (an empty transcript, no face found) keeps one all-zero step, so masked pooling never
    divides by zero; the model sees zeros there, as MMSA's models do."""

    features: dict[str, np.ndarray]  # modality -> float32 [N, L_m, D_m] (may be a read-only np.memmap)
    lengths: dict[str, np.ndarray]  # modality -> int64 [N], in [1, L_m]
    regression: np.ndarray  # float32 [N], in [-label_range, label_range]
    classes3: np.ndarray  # int64 [N]: 0 negative, 1 neutral, 2 positive
    ids: list[str]  # "video$_$clip"
    raw_text: list[str]
    unimodal: dict[str, np.ndarray] = field(default_factory=dict)  # SIMS only: modality -> float32 [N] label
    label_range: float = 3.0  # the corpus's: |regression| <= label_range (SIMS 1, MOSI / MOSEI 3)

    def __len__(self) -> int:
        return len(self.regression)


@dataclass
class FeatureCorpus:
    """A whole feature file: three splits and the dims / padded lengths that every split shares."""

    name: str  # "mosi" | "mosei" | "sims" | "custom"
    path: Path
    aligned: bool
    splits: dict[str, FeatureSplit]  # "train" | "valid" | "test"
    dims: dict[str, int]  # modality -> D_m
    seq_lens: dict[str, int]  # modality -> L_m
    label_range: float


def _fail(path: Path, split: str, key: str, message: str) -> FeatureFileError:
    return FeatureFileError(f"{path}: split '{split}', key '{key}': {message}")


def _chunks(n: int) -> Iterator[slice]:
    for start in range(0, n, CHUNK):
        yield slice(start, min(start + CHUNK, n))


def infer_dataset(dims: dict[str, int]) -> str:
    """The MMSA dataset whose (text, audio, video) dims these are, or "custom"."""
    for name, spec in DATASETS.items():
        if spec.dims == dims:
            return name
    return "custom"


def _feature(path: Path, split: str, raw: dict, key: str) -> np.ndarray:
    """``raw[key]`` as a numeric 3-D array (dtype unchanged yet)."""
    arr = raw[key]
    if not isinstance(arr, np.ndarray):
        raise _fail(path, split, key, f"expected a numpy array, found {type(arr).__name__}")
    if arr.dtype.kind not in "fiu":
        raise _fail(path, split, key, f"expected numbers, found dtype {arr.dtype}")
    if arr.ndim != 3:
        raise _fail(path, split, key, f"expected a 3-D array [N, L, D], found shape {arr.shape}")
    if arr.shape[0] == 0:
        raise _fail(path, split, key, "the split is empty (0 samples)")
    return arr


def _float_features(path: Path, split: str, key: str, arr: np.ndarray, allow_neg_inf: bool) -> np.ndarray:
    """float32, C-contiguous, NaN / +inf refused, -inf (audio only) set to 0 -- checked CHUNK samples at a time."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)  # no copy when the file already holds float32
    for s in _chunks(len(arr)):
        block = arr[s]  # [B, L, D]
        if np.isfinite(block).all():
            continue
        nan, pos, neg = np.isnan(block), np.isposinf(block), np.isneginf(block)
        for bad, what in ((nan, "NaN"), (pos, "+inf"), (None if allow_neg_inf else neg, "-inf")):
            if bad is not None and bad.any():
                sample = s.start + int(np.argmax(bad.reshape(len(block), -1).any(axis=1)))
                raise _fail(
                    path, split, key, f"holds {what} values (first in sample {sample}); expected finite features"
                )
        if not arr.flags.writeable:
            arr = arr.copy()  # an array unpickled from a read-only buffer
            block = arr[s]
        block[neg] = 0.0  # MMSA's loader does the same with -inf audio
    return arr


def _vector(path: Path, split: str, raw: dict, key: str, n: int) -> np.ndarray:
    """``raw[key]`` (list or array) as a finite 1-D numeric array of ``n`` entries ([N, 1] is accepted)."""
    try:
        arr = np.asarray(raw[key])
    except (ValueError, TypeError) as e:
        raise _fail(path, split, key, f"expected a list of numbers ({e})") from None
    if arr.dtype.kind not in "fiub" or (arr.ndim == 2 and arr.shape[1] != 1) or arr.ndim not in (1, 2):
        raise _fail(path, split, key, f"expected {n} numbers, found dtype {arr.dtype} shape {arr.shape}")
    arr = arr.reshape(-1)
    if len(arr) != n:
        raise _fail(path, split, key, f"has {len(arr)} entries, 'text' has {n} samples")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        first = int(np.argmax(~np.isfinite(arr)))
        raise _fail(path, split, key, f"holds {arr[first]} (sample {first}); expected finite numbers")
    return arr


def _integers(path: Path, split: str, key: str, arr: np.ndarray, low: int, high: int) -> np.ndarray:
    """int64 copy of ``arr`` after checking every entry is a whole number in [low, high]."""
    bad = (arr != np.round(arr)) | (arr < low) | (arr > high)
    if bad.any():
        first = int(np.argmax(bad))
        value = float(arr[first])
        shown = int(value) if value.is_integer() else value
        raise _fail(path, split, key, f"holds {shown} (sample {first}); expected whole numbers in [{low}, {high}]")
    return np.round(arr).astype(np.int64)


def _strings(path: Path, split: str, raw: dict, key: str, n: int) -> list[str]:
    values = raw[key]
    if isinstance(values, str) or not hasattr(values, "__len__"):
        raise _fail(path, split, key, f"expected a list of {n} strings, found {type(values).__name__}")
    if len(values) != n:
        raise _fail(path, split, key, f"has {len(values)} entries, 'text' has {n} samples")
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def _text_lengths(path: Path, split: str, raw: dict, text: np.ndarray) -> np.ndarray:
    """Tokens per sample: the attention-mask sum of ``text_bert``, or (no text_bert) the last non-zero row + 1."""
    n, steps = text.shape[:2]
    if "text_bert" not in raw:
        lengths = np.zeros(n, dtype=np.int64)
        for s in _chunks(n):
            rows = np.any(text[s] != 0, axis=2)  # [B, L]
            last = steps - np.argmax(rows[:, ::-1], axis=1)  # [B]: index of the last non-zero row + 1
            lengths[s] = np.where(rows.any(axis=1), last, 0)
        return lengths
    bert = raw["text_bert"]
    if not isinstance(bert, np.ndarray) or bert.dtype.kind not in "fiu":
        raise _fail(path, split, "text_bert", f"expected a numeric array [N, 3, L], found {type(bert).__name__}")
    if bert.ndim != 3 or bert.shape[1] != 3:
        raise _fail(path, split, "text_bert", f"expected shape [N, 3, L] (ids, mask, segments), found {bert.shape}")
    if bert.shape[0] != n or bert.shape[2] != steps:
        raise _fail(path, split, "text_bert", f"expected shape [{n}, 3, {steps}] like 'text', found {bert.shape}")
    mask_sum = bert[:, 1, :].astype(np.float64).sum(axis=1)  # [N]
    return _integers(path, split, "text_bert", mask_sum, 0, steps)


def _read_split(path: Path, split: str, raw: dict, label_range: float, aligned: bool) -> FeatureSplit:
    features: dict[str, np.ndarray] = {}
    lengths: dict[str, np.ndarray] = {}
    n = raw["text"].shape[0]
    for modality in MODALITIES:
        key = MODALITY_KEYS[modality]
        arr = _feature(path, split, raw, key)
        if arr.shape[0] != n:
            raise _fail(path, split, key, f"has {arr.shape[0]} samples, 'text' has {n}")
        steps = arr.shape[1]
        features[modality] = _float_features(path, split, key, arr, allow_neg_inf=modality == "audio")
        del arr
        raw[key] = None  # drop the file's copy as soon as ours exists (float64 files: halves the peak)
        if modality == "text":
            found = _text_lengths(path, split, raw, features["text"])
        elif aligned:
            found = np.full(n, steps, dtype=np.int64)
        else:
            lkey = f"{key}_lengths"
            found = _integers(path, split, lkey, _vector(path, split, raw, lkey, n).astype(np.float64), 0, steps)
        lengths[modality] = np.maximum(found, 1)  # [N]
    labels = _vector(path, split, raw, "regression_labels", n).astype(np.float32)  # [N]
    if (np.abs(labels) > label_range + 1e-6).any():
        first = int(np.argmax(np.abs(labels) > label_range + 1e-6))
        raise _fail(
            path,
            split,
            "regression_labels",
            f"holds {labels[first]} (sample {first}); expected [-{label_range}, {label_range}]",
        )
    if "classification_labels" in raw:
        classes = _vector(path, split, raw, "classification_labels", n).astype(np.float64)
        classes3 = _integers(path, split, "classification_labels", classes, 0, 2)
    else:  # MMSA-FET no longer writes them: MMSA's convention, negative < 0 = neutral < positive
        classes3 = (np.sign(labels) + 1).astype(np.int64)
    if "annotations" in raw:
        _strings(path, split, raw, "annotations", n)
    unimodal = {m: _vector(path, split, raw, k, n).astype(np.float32) for m, k in UNIMODAL_KEYS.items() if k in raw}
    return FeatureSplit(
        features=features,
        lengths=lengths,
        regression=labels,
        classes3=classes3,
        ids=_strings(path, split, raw, "id", n),
        raw_text=_strings(path, split, raw, "raw_text", n),
        unimodal=unimodal,
        label_range=label_range,
    )


def _shapes(path: Path, data: object) -> tuple[dict[str, int], dict[str, int], bool]:
    """Check the top level, every split's keys and the shapes shared by all splits; returns dims, seq_lens, aligned."""
    if not isinstance(data, dict):
        raise FeatureFileError(f"{path}: the top level is a {type(data).__name__}, expected a dict with {SPLITS}")
    dims: dict[str, int] = {}
    seq_lens: dict[str, int] = {}
    aligned_in: dict[str, bool] = {}
    for split in SPLITS:
        if split not in data:
            raise FeatureFileError(f"{path}: no split '{split}' (top-level keys: {sorted(map(str, data))})")
        raw = data[split]
        if not isinstance(raw, dict):
            raise FeatureFileError(f"{path}: split '{split}' is a {type(raw).__name__}, expected a dict of arrays")
        for key in REQUIRED_KEYS:
            if key not in raw:
                raise _fail(path, split, key, f"missing (the split has {sorted(map(str, raw))})")
        has = [k in raw for k in ("audio_lengths", "vision_lengths")]
        if has[0] != has[1]:
            key = "vision_lengths" if has[0] else "audio_lengths"
            raise _fail(path, split, key, "missing while the other *_lengths key is there")
        aligned_in[split] = not has[0]
        for modality in MODALITIES:
            key = MODALITY_KEYS[modality]
            arr = _feature(path, split, raw, key)
            if split == "train":
                dims[modality], seq_lens[modality] = arr.shape[2], arr.shape[1]
            elif arr.shape[2] != dims[modality]:
                raise _fail(path, split, key, f"{arr.shape[2]} features per step, split 'train' has {dims[modality]}")
            elif arr.shape[1] != seq_lens[modality]:
                raise _fail(path, split, key, f"{arr.shape[1]} steps, split 'train' has {seq_lens[modality]}")
    if len(set(aligned_in.values())) > 1:
        raise FeatureFileError(f"{path}: some splits have audio_lengths / vision_lengths and some not: {aligned_in}")
    return dims, seq_lens, aligned_in["train"]


def _peak_label(raw: dict) -> float:
    """Largest |regression label| of a split (inf when unreadable: _read_split then names the problem)."""
    try:
        labels = np.asarray(raw["regression_labels"], dtype=np.float64)
        return float(np.max(np.abs(labels))) if labels.size else 0.0
    except (ValueError, TypeError):
        return float("inf")


def read_mmsa(path: str | Path, dataset: str | None = None) -> FeatureCorpus:
    """Load and validate an MMSA feature pickle; raises ``FeatureFileError`` naming file, split and key.

    ``dataset`` ("mosi", "mosei", "sims") checks the file's dims against that dataset's table; None infers
    the dataset from the dims ("custom" when none matches: then the label range is 1 if every label lies
    in [-1, 1], else 3). Dims and padded lengths always come from the file.
    """
    path = Path(path)
    if dataset is not None and dataset.lower() not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: one of {', '.join(DATASETS)}")
    data = safe_load(path)
    dims, seq_lens, aligned = _shapes(path, data)
    assert isinstance(data, dict)  # _shapes checked the top level
    name = dataset.lower() if dataset is not None else infer_dataset(dims)
    if name in DATASETS:
        for modality, want in DATASETS[name].dims.items():
            if dims[modality] != want:
                key = MODALITY_KEYS[modality]
                raise _fail(
                    path, "train", key, f"expected {want} {modality} features for {name}, found {dims[modality]}"
                )
        label_range = DATASETS[name].label_range
    else:
        label_range = 1.0 if max(_peak_label(data[s]) for s in SPLITS) <= 1.0 + 1e-6 else 3.0
    splits = {split: _read_split(path, split, data[split], label_range, aligned) for split in SPLITS}
    return FeatureCorpus(name, path, aligned, splits, dims, seq_lens, label_range)


def check_dims(corpus: FeatureCorpus, dims: dict[str, int], source: str) -> None:
    """Raise ``FeatureFileError`` unless ``corpus`` has the dims a model from ``source`` (a checkpoint) expects."""
    for modality, want in dims.items():
        have = corpus.dims.get(modality)
        if have != want:
            raise FeatureFileError(
                f"model expects {want} {modality} features ({source}), file {corpus.path} has {have}"
            )
