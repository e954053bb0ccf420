"""Training with pretrained encoders: freezing, a separate learning rate, and features cached once per window.

A pretrained encoder's *trunk* (``pretrained.pretrained_trunks``: the speech transformer, the video ResNet18)
is what these act on; the heads (pooling, projection, fusion, classifiers) always train at ``--lr``.

    set_trainable(model, cfg, epoch)   requires_grad per epoch (--freeze_encoders, --unfreeze_after N), the
                                       speech front end frozen unless --train_speech_frontend
    keep_frozen_eval(model, frozen)    frozen trunks stay in eval mode (BatchNorm statistics and dropout fixed,
                                       so the cached features are exactly what the model computes)
    FrozenFeatureDataset               a window dataset whose frozen encoders' inputs are replaced by their
                                       ``features`` [C, T], computed once (fixed windows, no augmentation)
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from avemo.contract.progress import progress as progress_bar
from avemo.training.models.model import FusionModel
from avemo.training.models.pretrained import pretrained_trunks


def trunk_parameter_ids(model: FusionModel) -> set[int]:
    """ids of every parameter of a pretrained trunk (the ones --encoder_lr applies to)."""
    return {id(p) for trunk in pretrained_trunks(model).values() for p in trunk.parameters()}


def frozen_at(cfg, epoch: int) -> bool:
    """Whether the trunks are frozen in ``epoch`` (1-based)."""
    return cfg.freeze_encoders and (cfg.unfreeze_after <= 0 or epoch < cfg.unfreeze_after)


def set_trainable(model: FusionModel, cfg, epoch: int) -> bool:
    """requires_grad of every trunk parameter for ``epoch``; a speech encoder's front end stays frozen unless
    ``cfg.train_speech_frontend``. Returns whether the trunks are frozen. AdamW skips parameters without a
    gradient, so one optimiser (built over every parameter) serves frozen and unfrozen epochs."""
    frozen = frozen_at(cfg, epoch)
    for name, trunk in pretrained_trunks(model).items():
        trunk.requires_grad_(not frozen)
        front = getattr(model.encoders[name], "front_end", None)
        if front is not None and not cfg.train_speech_frontend:
            front().requires_grad_(False)
    return frozen


def keep_frozen_eval(model: FusionModel, frozen: bool) -> None:
    """Put frozen trunks back in eval mode after ``model.train()``."""
    if frozen:
        for trunk in pretrained_trunks(model).values():
            trunk.eval()


def cacheable(model: FusionModel, cfg, teachers: dict) -> dict[str, str]:
    """input name -> modality of the encoders whose ``features`` can be cached for the whole run: frozen
    throughout (--freeze_encoders without --unfreeze_after), --cache_features on, no teacher reading the raw
    inputs. Empty when nothing can be cached."""
    if not (cfg.freeze_encoders and cfg.cache_features and cfg.unfreeze_after <= 0) or teachers:
        return {}
    trunks = pretrained_trunks(model)
    names = dict(zip(model.modalities, model.input_names))
    return {names[m]: m for m in trunks}


@contextlib.contextmanager
def features_given(model: FusionModel, modalities: list[str]):
    """Within the block the named encoders take their ``features`` as input (what the cache holds)."""
    encoders: list[Any] = [model.encoders[m] for m in modalities]  # encoders with a features_given switch
    for enc in encoders:
        enc.features_given = True
    try:
        yield
    finally:
        for enc in encoders:
            enc.features_given = False


class FrozenFeatureDataset(Dataset):
    """``base`` (a ``WindowDataset``) over its fixed evaluation windows, with the inputs in ``inputs``
    (input name -> modality) replaced by the frozen encoder's ``features`` of that window: audio -> [768, T]
    for a speech encoder, frames -> [512, F] for the video ResNet18, stored as float16 and returned as float32.
    Every other key (mask, label, clip, the other modality's raw input) comes from ``base``."""

    def __init__(self, base, model: FusionModel, inputs: dict[str, str], batch_size: int = 16, progress: bool = False,
                 desc: str = "features"):  # fmt: skip
        self.base = copy.copy(base)
        self.base.train = False  # the fixed windows of evaluation: a cached window must be the same every epoch
        self.inputs = dict(inputs)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        store: dict[str, list[torch.Tensor]] = {name: [] for name in self.inputs}
        with torch.no_grad():
            batches = DataLoader(self.base, batch_size=batch_size)
            for batch in progress_bar(batches, desc=desc, leave=False, disable=not progress):
                for name, modality in self.inputs.items():
                    x = batch[name].to(device)
                    encoder: Any = model.encoders[modality]  # a pretrained encoder: trunk features
                    store[name].append(encoder.features(x).to("cpu", torch.float16))  # [B, C, T]
        model.train(was_training)
        self.features = {name: torch.cat(chunks) for name, chunks in store.items()}  # [N, C, T]

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, k: int) -> dict:
        item = self.base[k]
        for name, feats in self.features.items():
            item[name] = feats[k].float()
        return item

    def __getattr__(self, name: str):  # labels, clips, dataset_name ... of the window dataset
        if name in ("base", "inputs", "features"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.features.values())
