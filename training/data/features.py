"""Torch dataset over one split of a feature corpus (MOSI / MOSEI / SIMS), for any subset of modalities.

One item is one utterance: a float32 tensor per selected modality ([L_m, D_m], zero-padded after its
length, copied out of the memory map), the valid lengths and a modality mask in the order of
``modalities``, the label and the sample index as ``clip`` (every utterance is its own clip, so code
that groups windows by clip -- clip-level metrics -- works unchanged on features).

Targets (MMSA's conventions, so our Acc-2 / Acc-3 / Acc-7 mean what the papers' do):

- regression: the file's label, unchanged (MOSI / MOSEI in [-3, 3], SIMS in [-1, 1]);
- 2 classes: 1 (non-negative) if label >= 0 else 0 (negative) -- MMSA's "Has0" Acc-2;
- 3 classes: the file's ``classification_labels`` (0 negative, 1 neutral, 2 positive);
- 7 classes: round(clip(label * 3 / label_range, -3, 3)) + 3, i.e. the integer sentiment -3..3 shifted
  to 0..6; SIMS labels (range 1) are first stretched to [-3, 3]. ``np.round`` rounds halves to even, as
  MMSA's Acc-7 does (MOSEI's labels, multiples of 1/3, and SIMS's, of 0.2, never fall on a half).
"""

from __future__ import annotations

import dataclasses
import mmap
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from avemo.training.data.mmsa import FeatureSplit

MODALITY_ORDER = ("text", "audio", "video")
_LETTERS = {"t": "text", "a": "audio", "v": "video"}
TASKS = ("regression", "classification")
NUM_CLASSES = (2, 3, 7)


def parse_modalities(spec: str) -> tuple[str, ...]:
    """Letters t / a / v in any order, each at most once -> modality names in ``MODALITY_ORDER``.

    ``parse_modalities("va") == ("audio", "video")``; anything else raises ValueError saying why.
    """
    letters = spec.strip().lower()
    if not letters:
        raise ValueError("modalities: empty; give letters t (text), a (audio), v (video), e.g. 'tav'")
    for letter in letters:
        if letter not in _LETTERS:
            raise ValueError(f"modalities {spec!r}: unknown letter {letter!r}; use t (text), a (audio), v (video)")
        if letters.count(letter) > 1:
            raise ValueError(f"modalities {spec!r}: {_LETTERS[letter]} ({letter!r}) given more than once")
    return tuple(m for m in MODALITY_ORDER if m[0] in letters)


def class_names(num_classes: int, dataset: str | None = None) -> tuple[str, ...]:
    """Names of the classes of ``targets(..., num_classes)``, index = class id.

    ``dataset`` is accepted for the callers that pass it: the names are the same for MOSI, MOSEI and SIMS
    (SIMS's labels are stretched to -3..3 for 7 classes)."""
    if num_classes == 2:
        return ("negative", "non-negative")
    if num_classes == 3:
        return ("negative", "neutral", "positive")
    if num_classes == 7:
        return tuple(str(k) for k in range(-3, 4))
    raise ValueError(f"num_classes {num_classes}: sentiment classes are 2, 3 or 7")


def targets(split: FeatureSplit, task: str, num_classes: int) -> np.ndarray:
    """Whole-split targets: float32 [N] (regression) or int64 [N] class ids (see the module docstring)."""
    y = np.asarray(split.regression, dtype=np.float32)  # [N]
    if task == "regression":
        return y
    if task != "classification":
        raise ValueError(f"task {task!r}: one of {', '.join(TASKS)}")
    if num_classes == 2:
        return (y >= 0).astype(np.int64)
    if num_classes == 3:
        return np.asarray(split.classes3, dtype=np.int64)
    if num_classes == 7:
        return (np.round(np.clip(y * 3.0 / split.label_range, -3.0, 3.0)) + 3).astype(np.int64)
    raise ValueError(f"num_classes {num_classes}: sentiment classes are 2, 3 or 7")


@dataclasses.dataclass(frozen=True)
class _MappedFile:
    """How to reopen a whole-file np.memmap: what a pickled dataset carries instead of the array's bytes."""

    filename: str
    offset: int
    shape: tuple[int, ...]
    dtype: str

    @staticmethod
    def of(arr: np.ndarray) -> _MappedFile | None:
        if isinstance(arr, np.memmap) and arr.filename and isinstance(arr.base, mmap.mmap):  # not a view
            return _MappedFile(str(arr.filename), int(arr.offset), arr.shape, arr.dtype.str)
        return None

    def open(self) -> np.memmap:
        return np.memmap(
            Path(self.filename), dtype=np.dtype(self.dtype), mode="r", offset=self.offset, shape=self.shape
        )


class FeatureDataset(Dataset):
    """Items of one split: ``{modality: float32 [L_m, D_m], "lengths": int64 [M], "mask": float32 [M],
    "label": float32 [] (regression) or int64 [] (classification), "clip": int64 []}``.

    Pickling (DataLoader workers under "spawn", DDP) sends memory-mapped features as file references,
    not as gigabytes of array bytes; the receiving process maps the same cache files."""

    dataset_name: str  # set by prepare_features: the metrics' definitions depend on it

    def __init__(self, split: FeatureSplit, modalities: tuple[str, ...], task: str, num_classes: int = 3) -> None:
        if (
            not modalities
            or any(m not in MODALITY_ORDER for m in modalities)
            or len(set(modalities)) != len(modalities)
        ):
            raise ValueError(f"modalities {modalities!r}: distinct names among {MODALITY_ORDER}")
        self.split = split
        self.modalities = tuple(modalities)
        self.task = task
        self.num_classes = num_classes if task == "classification" else 1
        self._targets = targets(split, task, num_classes)  # [N]
        self._lengths = np.stack([np.asarray(split.lengths[m], dtype=np.int64) for m in self.modalities], 1)  # [N, M]

    def __len__(self) -> int:
        return len(self._targets)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        refs: dict[str, Any] = {m: _MappedFile.of(a) or a for m, a in self.split.features.items()}  # arrays or refs
        state["split"] = dataclasses.replace(self.split, features=refs)
        return state

    def __setstate__(self, state: dict) -> None:
        split = state["split"]
        opened = {m: a.open() if isinstance(a, _MappedFile) else a for m, a in split.features.items()}
        state["split"] = dataclasses.replace(split, features=opened)
        self.__dict__.update(state)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {m: torch.from_numpy(np.array(self.split.features[m][i], dtype=np.float32)) for m in self.modalities}
        item["lengths"] = torch.from_numpy(self._lengths[i].copy())  # [M]
        item["mask"] = torch.ones(len(self.modalities), dtype=torch.float32)  # [M]: every modality present
        dtype = torch.float32 if self.task == "regression" else torch.int64
        item["label"] = torch.tensor(self._targets[i].item(), dtype=dtype)  # []
        item["clip"] = torch.tensor(i, dtype=torch.int64)  # []
        return item

    @property
    def labels(self) -> np.ndarray:
        """Targets of the whole split: class ids (int64 [N]) or regression targets (float32 [N])."""
        return self._targets

    @property
    def sources(self) -> list[str]:
        """The utterance ids ("video$_$clip"), index = item index."""
        return self.split.ids

    @property
    def dims(self) -> dict[str, int]:
        """Features per step of each selected modality."""
        return {m: int(self.split.features[m].shape[2]) for m in self.modalities}

    @property
    def seq_lens(self) -> dict[str, int]:
        """Padded steps of each selected modality (every item has exactly these)."""
        return {m: int(self.split.features[m].shape[1]) for m in self.modalities}

    @property
    def class_names(self) -> tuple[str, ...]:
        return class_names(self.num_classes) if self.task == "classification" else ("sentiment",)
