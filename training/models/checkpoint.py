"""Checkpoints: atomic writes, and a model rebuilt from the checkpoint alone.

A checkpoint is a plain dict loadable with ``torch.load(path, weights_only=True)``:
    format       "avemo-checkpoint-v1"
    model_config ModelConfig.to_dict()
    labels       list of class names (index = class id)
    geometry     WindowGeometry.to_dict()
    state_dict   model weights
    metrics      dict of floats (validation metrics at save time)
    train_config_json  the TrainConfig (all CLI flags: losses, weighting, split, ...) as JSON
    train_state  (last.pt only) optimizer, scheduler, early stopping, RNG states, epoch
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from avemo.contract.geometry import WindowGeometry
from avemo.training.models.config import ModelConfig
from avemo.training.models.model import FusionModel, build_model

FORMAT = "avemo-checkpoint-v1"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a kill never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_checkpoint(
    model: FusionModel,
    cfg: ModelConfig,
    labels: list[str],
    geometry: WindowGeometry,
    metrics: dict | None = None,
    train_state: dict | None = None,
    train_config: dict | None = None,
) -> dict:
    ckpt = {
        "format": FORMAT,
        "model_config": cfg.to_dict(),
        "labels": list(labels),
        "geometry": geometry.to_dict(),
        "state_dict": {
            k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
        },  # NCHW even after channels_last
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
    }
    if train_config is not None:
        ckpt["train_config_json"] = json.dumps(train_config)  # every training flag, for the record
    if train_state is not None:
        ckpt["train_state"] = train_state
    return ckpt


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unpickling problem the same way
        raise ValueError(f"checkpoint {path} could not be read: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not an avemo checkpoint (expected format {FORMAT!r})")
    return ckpt


# State-dict names of clip checkpoints written before the encoders, norms and heads were keyed by modality:
# old prefix -> new prefix (applied to the start of each key, first match wins).
LEGACY_PREFIXES = tuple(
    (f"{old}{m}{sep}", new.format(m=m))
    for m in ("audio", "video")
    for old, sep, new in (
        ("", "_encoder.", "encoders.{m}."),
        ("", "_norm.", "norms.{m}."),
        ("", "_aux.", "aux.{m}."),
        ("", "_variational.", "variational.{m}."),
        ("", "_proj.", "proj.{m}."),
        ("fusion.", "_head.", "fusion.heads.{m}."),  # late
        ("fusion.enc_", ".", "fusion.enc.{m}."),  # hierarchical
        ("fusion.dec_", ".", "fusion.dec.{m}."),
    )
) + (
    ("fusion.audio_to_video.", "fusion.attend.audio_to_video."),  # xattn
    ("fusion.video_to_audio.", "fusion.attend.video_to_audio."),
    ("fusion.norm_a.", "fusion.norms.audio."),
    ("fusion.norm_v.", "fusion.norms.video."),
)


def upgrade_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with the old per-attribute names (``audio_encoder.*``, ``fusion.norm_a.*``, ...) renamed to
    the modality-keyed ones (``encoders.audio.*``, ``fusion.norms.audio.*``); a current one is returned as is.
    The parameters keep their order, so an old run's optimiser state still matches on ``--resume``."""
    if not any(k.startswith(("audio_encoder.", "video_encoder.")) for k in state_dict):
        return state_dict
    out = {}
    for k, v in state_dict.items():
        for old, new in LEGACY_PREFIXES:
            if k.startswith(old):
                k = new + k[len(old) :]
                break
        out[k] = v
    return out


def model_from_checkpoint(path_or_ckpt: str | os.PathLike | dict) -> tuple[FusionModel, dict]:
    """Rebuild the model (eval mode) from a checkpoint; returns (model, checkpoint dict)."""
    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_checkpoint(path_or_ckpt)
    cfg = ModelConfig.from_dict(ckpt["model_config"])
    model = build_model(cfg, WindowGeometry.from_dict(ckpt["geometry"]))
    model.load_state_dict(upgrade_state_dict(ckpt["state_dict"]))
    return model.eval(), ckpt
