"""Export-only wrappers of feature models: an utterance-level model with the feature contract's signature
(``contract.features``), a conversation model with the dialogue contract's (``contract.dialogues``).

    wrapper = feature_export_wrapper(model, signature)   # forward(text, text_lengths, ..., modality_mask)
    prediction_or_probs, modality_weights = wrapper(*inputs)
    wrapper = dialogue_export_wrapper(model, signature)  # forward(text, ..., speakers, modality_mask): one dialogue

``forward`` takes one named argument per contract input, in the contract's order, because Triton's
libtorch backend binds inputs by ``forward``'s argument names and a model reads only some modalities:
the class is made per signature with a ``forward`` of exactly those names.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import nn

from avemo.contract.dialogues import DialogueSignature
from avemo.contract.features import FeatureSignature
from avemo.training.models.model import FusionModel

_Wrapper = TypeVar("_Wrapper", bound=nn.Module)


class FeatureExportWrapper(nn.Module):
    """Inputs are made safe first, in the graph, so no backend can return a non-finite output or index
    past the padding: non-finite features are zeroed, each lengths input is clamped to [1, L_m] (0 reads
    one zero step), the mask to [0, 1]. The Python backend refuses such requests before they get here
    (INVALID_ARG); this is the last line for the native backends.

    Every input stays a graph input, also of a unimodal baseline among several modalities: each is read
    into a zero-valued [B, 1] term, row by row (one request's values never reach another's rows)."""

    def __init__(self, model: FusionModel, signature: FeatureSignature):
        super().__init__()
        if tuple(model.modalities) != signature.modalities:
            raise ValueError(f"model modalities {model.modalities} differ from the signature's {signature.modalities}")
        self.model = model.eval()
        self.steps = [int(signature.seq_lens[m]) for m in signature.modalities]  # L_m per modality
        self.regression = signature.task == "regression"

    def _run(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.steps)
        xs = [torch.nan_to_num(args[2 * i], nan=0.0, posinf=0.0, neginf=0.0) for i in range(n)]  # [B, L_m, D_m]
        lengths = torch.cat([args[2 * i + 1].reshape(-1, 1).clamp(1, self.steps[i]) for i in range(n)], 1)  # [B, M]
        mask = torch.nan_to_num(args[2 * n], nan=0.0, posinf=0.0, neginf=0.0).clamp(0.0, 1.0)  # [B, M]
        out = self.model(*xs, mask, lengths)
        y = out["logits"] if self.regression else torch.softmax(out["logits"], dim=-1)  # [B, 1] or [B, C]
        touch = lengths[:, :1].to(y.dtype) * 0.0  # [B, 1]
        for x in xs:
            touch = touch + x[:, 0, :1] * 0.0  # keeps every input in the graph
        return y + touch, out["modality_weights"]


class DialogueExportWrapper(nn.Module):
    """A conversation model (``DialogueModel``) over one whole dialogue: features [1, U, D_m], speakers [1, U],
    mask [1, U, M] -> (probs [1, U, C], modality_weights [1, U, M]); every utterance is real. Inputs are made
    safe in the graph as for the other wrappers: non-finite features zeroed, speakers clamped to 0..S-1,
    the mask to [0, 1]."""

    def __init__(self, model: Any, signature: DialogueSignature):  # a DialogueModel or JoyfulModel (their _run)
        super().__init__()
        if tuple(model.modalities) != signature.modalities or not hasattr(model, "contexts"):
            raise ValueError(f"a DialogueModel over {signature.modalities} is needed, got {type(model).__name__}")
        self.model: Any = model.eval()
        self.max_speaker = signature.num_speakers - 1

    def _run(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.model.modalities)
        xs = [torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0) for x in args[:n]]  # [1, U, D_m]
        speakers = args[n].clamp(0, self.max_speaker)  # [1, U]
        mask = torch.nan_to_num(args[n + 1], nan=0.0, posinf=0.0, neginf=0.0).clamp(0.0, 1.0)  # [1, U, M]
        out = self.model._run(xs, mask, speakers, None)  # one row per utterance: [U, C], [U, M]
        b, u = speakers.shape
        probs = torch.softmax(out["logits"], dim=-1).reshape(b, u, -1)  # [1, U, C]
        touch = speakers[:, :, None].to(probs.dtype) * 0.0  # [1, U, 1]
        for x in xs:
            touch = touch + x[:, :, :1] * 0.0  # keeps every input in the graph
        return probs + touch, out["modality_weights"].reshape(b, u, -1)


def _named_forward(base: type[_Wrapper], signature, model: nn.Module) -> _Wrapper:
    """An instance of a subclass of ``base`` whose ``forward`` names its arguments after the signature's inputs
    (Triton's libtorch backend binds inputs by those names)."""
    names = [t.name for t in signature.inputs]
    if not all(n.isidentifier() for n in names):
        raise ValueError(f"input names {names} must be Python identifiers")
    namespace: dict = {}
    args = ", ".join(names)
    exec(f"def forward(self, {args}):\n    return self._run({args})\n", namespace)  # noqa: S102 - names checked
    cls = type(f"{base.__name__}_{'_'.join(signature.served)}", (base,), namespace)
    return cls(model, signature)


def feature_export_wrapper(model: FusionModel, signature: FeatureSignature) -> FeatureExportWrapper:
    """A ``FeatureExportWrapper`` whose ``forward`` names its arguments after the signature's inputs."""
    return _named_forward(FeatureExportWrapper, signature, model)


def dialogue_export_wrapper(model: nn.Module, signature: DialogueSignature) -> DialogueExportWrapper:
    """A ``DialogueExportWrapper`` whose ``forward`` names its arguments after the signature's inputs."""
    return _named_forward(DialogueExportWrapper, signature, model)


def dialogue_signature_of(ckpt: dict) -> DialogueSignature:
    """The serving signature of a conversation checkpoint."""
    from avemo.training.data.dialogues import LAYOUTS

    cfg = ckpt["model_config"]
    modalities = tuple(cfg["modalities"])
    dataset = str(_trained(ckpt).get("dataset", ""))
    return DialogueSignature(
        modalities=modalities,
        dims={m: int(cfg["input_dims"][m]) for m in modalities},
        num_speakers=int(cfg["num_speakers"]),
        labels=tuple(ckpt["labels"]),
        context=cfg.get("context", "full"),
        dataset=dataset,
        layout=str(LAYOUTS.get(dataset, "")),
    )


def _trained(ckpt: dict) -> dict:
    import json

    return json.loads(ckpt.get("train_config_json", "{}") or "{}")


def feature_signature_of(ckpt: dict) -> FeatureSignature:
    """The serving signature of an utterance-level feature checkpoint (config, labels, dataset from the file)."""
    cfg = ckpt["model_config"]
    modalities = tuple(cfg["modalities"])
    trained = _trained(ckpt)
    return FeatureSignature(
        modalities=modalities,
        dims={m: int(cfg["input_dims"][m]) for m in modalities},
        seq_lens={m: int(cfg["seq_lens"][m]) for m in modalities},
        task=cfg.get("task", "regression"),
        labels=tuple(ckpt["labels"]),
        dataset=str(trained.get("dataset", "")),
    )
