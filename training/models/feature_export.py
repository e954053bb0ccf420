"""Export-only wrapper of a feature model, with the feature contract's signature (``contract.features``).

    wrapper = feature_export_wrapper(model, signature)   # forward(text, text_lengths, ..., modality_mask)
    prediction_or_probs, modality_weights = wrapper(*inputs)

``forward`` takes one named argument per contract input, in the contract's order, because Triton's
libtorch backend binds inputs by ``forward``'s argument names and a model reads only some modalities:
the class is made per signature with a ``forward`` of exactly those names.
"""

from __future__ import annotations

import torch
from torch import nn

from avemo.contract.features import FeatureSignature


class FeatureExportWrapper(nn.Module):
    """Inputs are made safe first, in the graph, so no backend can return a non-finite output or index
    past the padding: non-finite features are zeroed, each lengths input is clamped to [1, L_m] (0 reads
    one zero step), the mask to [0, 1]. The Python backend refuses such requests before they get here
    (INVALID_ARG); this is the last line for the native backends.

    Every input stays a graph input, also of a unimodal baseline among several modalities: each is read
    into a zero-valued [B, 1] term, row by row (one request's values never reach another's rows)."""

    def __init__(self, model: nn.Module, signature: FeatureSignature):
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


def feature_export_wrapper(model: nn.Module, signature: FeatureSignature) -> FeatureExportWrapper:
    """A ``FeatureExportWrapper`` whose ``forward`` names its arguments after the signature's inputs."""
    names = [t.name for t in signature.inputs]
    if not all(n.isidentifier() for n in names):
        raise ValueError(f"input names {names} must be Python identifiers")
    namespace: dict = {}
    args = ", ".join(names)
    exec(f"def forward(self, {args}):\n    return self._run({args})\n", namespace)  # noqa: S102 - names checked
    cls = type(f"FeatureExportWrapper_{'_'.join(signature.served)}", (FeatureExportWrapper,), namespace)
    return cls(model, signature)


def feature_signature_of(ckpt: dict) -> FeatureSignature:
    """The serving signature of an utterance-level feature checkpoint (config, labels, dataset from the file)."""
    import json

    cfg = ckpt["model_config"]
    modalities = tuple(cfg["modalities"])
    trained = json.loads(ckpt.get("train_config_json", "{}") or "{}")
    return FeatureSignature(
        modalities=modalities,
        dims={m: int(cfg["input_dims"][m]) for m in modalities},
        seq_lens={m: int(cfg["seq_lens"][m]) for m in modalities},
        task=cfg.get("task", "regression"),
        labels=tuple(ckpt["labels"]),
        dataset=str(trained.get("dataset", "")),
    )
