"""Torch dataset over the dialogues of one split (IEMOCAP / MELD feature files), batched by dialogue.

One item is one whole dialogue; ``collate`` pads a batch of dialogues to the longest one:

  <modality>  float32 [B, U, D_m]  one feature vector per utterance, zero on padding
  mask        float32 [B, U, M]    modality mask (1: present), zero on padding
  speakers    int64   [B, U]       speaker index inside the dialogue
  utterances  bool    [B, U]       True on real utterances
  label       int64   [N]          the real utterances' classes, row-major (dialogue 0's first): N = utterances.sum()
  clip        int64   [N]          each utterance's index in the split (every utterance is its own "clip")

so the model's outputs (one row per real utterance, same order) line up with ``label`` and the trainer,
the losses, ``predict`` and the reports work per utterance unchanged. A dialogue always stays whole:
splits are made of dialogues (``dialogues.read_dialogues``), never of utterances.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from avemo.training.data.dialogues import Dialogue, check_modalities, read_dialogues


class DialogueDataset(Dataset):
    """Dialogues of one split for the given modalities (names among text / audio / video)."""

    dataset_name: str  # set by prepare_dialogues

    def __init__(self, dialogues: list[Dialogue], modalities: tuple[str, ...], class_names: tuple[str, ...]):
        if not dialogues:
            raise ValueError("a dialogue dataset needs at least one dialogue")
        self.dialogues = dialogues
        self.modalities = tuple(modalities)
        self.class_names = tuple(class_names)
        self.num_classes = len(class_names)
        self.task = "classification"
        counts = np.array([len(d) for d in dialogues], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])  # [len] first utterance index of each dialogue

    def __len__(self) -> int:
        return len(self.dialogues)

    def __getitem__(self, i: int) -> dict:
        d = self.dialogues[i]
        item = {m: torch.from_numpy(np.ascontiguousarray(d.features[m], dtype=np.float32)) for m in self.modalities}
        item["speakers"] = torch.from_numpy(np.asarray(d.speakers, dtype=np.int64))  # [n]
        item["label"] = torch.from_numpy(np.asarray(d.labels, dtype=np.int64))  # [n]
        item["clip"] = torch.arange(len(d), dtype=torch.int64) + int(self.offsets[i])  # [n]
        return item

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        """Pad a list of ``__getitem__`` items into one batch (see the module docstring)."""
        counts = [len(it["label"]) for it in items]
        b, u, m = len(items), max(counts), len(self.modalities)
        batch: dict[str, torch.Tensor] = {}
        for name in self.modalities:
            x = items[0][name].new_zeros(b, u, items[0][name].shape[1])  # [B, U, D]
            for k, it in enumerate(items):
                x[k, : counts[k]] = it[name]
            batch[name] = x
        utterances = torch.zeros(b, u, dtype=torch.bool)
        speakers = torch.zeros(b, u, dtype=torch.int64)
        for k, it in enumerate(items):
            utterances[k, : counts[k]] = True
            speakers[k, : counts[k]] = it["speakers"]
        batch["utterances"] = utterances  # [B, U]
        batch["speakers"] = speakers  # [B, U]
        batch["mask"] = utterances[:, :, None].float().expand(b, u, m).contiguous()  # [B, U, M]
        batch["label"] = torch.cat([it["label"] for it in items])  # [N]
        batch["clip"] = torch.cat([it["clip"] for it in items])  # [N]
        return batch

    @property
    def labels(self) -> np.ndarray:
        """Every utterance's class, in ``clip`` order: int64 [N]."""
        return np.concatenate([np.asarray(d.labels, dtype=np.int64) for d in self.dialogues])

    @property
    def sources(self) -> list[str]:
        """Utterance ids, index = ``clip``."""
        return [uid for d in self.dialogues for uid in d.utterance_ids]

    @property
    def utterances(self) -> int:
        return int(sum(len(d) for d in self.dialogues))

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(self.dialogues[0].features[m].shape[1]) for m in self.modalities}


def prepare_dialogues(
    data_root: str | Path, dataset: str, modalities: tuple[str, ...] | None = None, folds: int = 0, fold: int = 0
) -> tuple[dict, dict]:
    """A dialogue feature file -> ({"train", "val", "test": DialogueDataset}, info with the dims, speakers,
    class names and the dialogue / utterance counts of each split, which the trainer stores in the config).
    ``modalities`` None: every modality the file has (MELD's 9-tuple: text and audio). ``folds`` >= 2: fold
    ``fold`` of the folds of whole IEMOCAP sessions / MELD dialogues (``read_dialogues``; info "folds" says
    which groups it tests) instead of the file's trainVid / testVid."""
    corpus = read_dialogues(data_root, dataset, folds=folds, fold=fold)
    if modalities is None:
        modalities = tuple(m for m in ("text", "audio", "video") if m in corpus.dims)
    check_modalities(corpus, modalities)
    datasets = {}
    for ours, theirs in (("train", "train"), ("val", "valid"), ("test", "test")):
        ds = DialogueDataset(corpus.splits[theirs], modalities, corpus.class_names)
        ds.dataset_name = dataset
        datasets[ours] = ds
    info = {
        "dataset": dataset,
        "feature_file": str(data_root),
        "modalities": list(modalities),
        "file_modalities": sorted(corpus.dims),
        "input_dims": {m: int(corpus.dims[m]) for m in modalities},
        "seq_lens": {m: 1 for m in modalities},
        "num_speakers": int(corpus.num_speakers),
        "dialogues": {k: len(v) for k, v in datasets.items()},
        "utterances": {k: v.utterances for k, v in datasets.items()},
        "samples": {k: v.utterances for k, v in datasets.items()},
        "problems": [],
    }
    if corpus.fold:
        info["folds"] = corpus.fold
    return datasets, info
