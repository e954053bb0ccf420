"""The serving contract of a conversation model (IEMOCAP / MELD utterance features, one dialogue per request).

A conversation model answers every utterance of a dialogue at once: its context attends over the whole
dialogue with the speakers' identities. One request is one dialogue of U utterances (U varies; Triton's
``max_batch_size`` is 1 and there is no dynamic batcher: dialogues of different lengths cannot be stacked):

| tensor | dtype | dims (batch first) | meaning |
|---|---|---|---|
| ``text`` / ``audio`` / ``vision`` | FP32 | [1, U, D_m] | one feature vector per utterance, in spoken order |
| ``speakers`` | INT64 | [1, U] | who spoke each utterance, 0..S-1 (IEMOCAP 0 = M, 1 = F) |
| ``modality_mask`` | FP32 | [1, U, M] | 1 = present; every utterance has one at least |
| ``probs`` | FP32 | [1, U, C] | class probabilities per utterance; ``labels.txt`` |
| ``modality_weights`` | FP32 | [1, U, M] | each modality's share, per utterance |

Only the modalities the model reads are inputs (text, audio, vision order). D_m, S, the classes, the
dataset and the context (``full``: every utterance sees the whole dialogue; ``past``: only what was said
before it, what a live conversation allows) are config parameters, read back by ``from_parameters``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from avemo.contract.features import MODEL_NAMES, SERVED_NAMES, FeatureSignature, _pairs
from avemo.contract.tensors import MODALITY_MASK, MODALITY_WEIGHTS, PROBS, TensorSpec

SPEAKERS = "speakers"
KIND = "dialogue"  # the ``kind`` parameter of a conversation model's config


@dataclass(frozen=True)
class DialogueSignature:
    """What one served conversation model takes and gives (see the module docstring)."""

    modalities: tuple[str, ...]  # model modality names, e.g. ("text", "audio", "video")
    dims: dict[str, int]  # modality -> D_m, features per utterance
    num_speakers: int  # S: speaker ids are 0..S-1
    labels: tuple[str, ...]  # class names
    context: str = "full"  # full | past | none
    dataset: str = ""  # iemocap | iemocap_4 | meld | meld_sentiment
    layout: str = ""  # iemocap | meld: the file layout the model was trained on
    extra: dict[str, str] = field(default_factory=dict, compare=False)  # other config parameters, as served

    task = "classification"  # conversation models classify utterances

    def __post_init__(self) -> None:
        if not self.modalities or any(m not in SERVED_NAMES for m in self.modalities):
            raise ValueError(f"modalities {self.modalities}: names among {tuple(SERVED_NAMES)}")
        if any(int(self.dims.get(m, 0)) < 1 for m in self.modalities) or self.num_speakers < 1 or not self.labels:
            raise ValueError(f"dims {self.dims}, {self.num_speakers} speakers, labels {self.labels}: all must be >= 1")

    @property
    def served(self) -> tuple[str, ...]:
        return tuple(SERVED_NAMES[m] for m in self.modalities)

    @property
    def output_name(self) -> str:
        return PROBS

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """Input specs without the batch dim; -1 = U, the dialogue's utterances."""
        specs = [TensorSpec(s, "FP32", (-1, self.dims[m]), f"{m} features per utterance") for m, s in
                 zip(self.modalities, self.served)]  # fmt: skip
        specs.append(TensorSpec(SPEAKERS, "INT64", (-1,), f"speaker of each utterance, 0..{self.num_speakers - 1}"))
        specs.append(TensorSpec(MODALITY_MASK, "FP32", (-1, len(self.modalities)), "1 = present, per utterance"))
        return tuple(specs)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return (
            TensorSpec(PROBS, "FP32", (-1, len(self.labels)), "class probabilities per utterance; labels.txt"),
            TensorSpec(MODALITY_WEIGHTS, "FP32", (-1, len(self.modalities)), "modality weights per utterance"),
        )

    def parameters(self) -> dict[str, str]:
        return {
            "kind": KIND,
            "dataset": self.dataset,
            "layout": self.layout,
            "task": self.task,
            "modalities": ",".join(self.served),
            "feature_dims": ",".join(f"{s}:{self.dims[m]}" for m, s in zip(self.modalities, self.served)),
            "num_speakers": str(self.num_speakers),
            "context": self.context,
            "labels": ",".join(self.labels),
            "num_classes": str(len(self.labels)),
        }

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> DialogueSignature:
        """The signature a served config describes; ValueError naming what is missing or malformed."""
        if params.get("kind") != KIND:
            raise ValueError(f"not a conversation model: parameter kind is {params.get('kind')!r}, expected {KIND!r}")
        missing = [k for k in ("modalities", "feature_dims", "num_speakers", "labels") if not params.get(k)]
        if missing:
            raise ValueError(f"the served config lacks the parameter(s) {missing}")
        served = [s.strip() for s in params["modalities"].split(",") if s.strip()]
        dims = _pairs(params["feature_dims"], "feature_dims")
        if any(s not in MODEL_NAMES for s in served) or set(dims) != set(served):
            raise ValueError(f"parameters modalities {served} / feature_dims {dims} do not describe one model")
        own = set(cls.__dataclass_fields__) | {"kind", "modalities", "feature_dims", "num_classes", "task"}
        return cls(
            modalities=tuple(MODEL_NAMES[s] for s in served),
            dims={MODEL_NAMES[s]: d for s, d in dims.items()},
            num_speakers=int(params["num_speakers"]),
            labels=tuple(x for x in params["labels"].split(",") if x),
            context=params.get("context", "full"),
            dataset=params.get("dataset", ""),
            layout=params.get("layout", ""),
            extra={k: v for k, v in params.items() if k not in own},
        )


# served models described by a signature (tensors, dims and parameters of their own) rather than the clip
# model's window geometry
SIGNATURES = (FeatureSignature, DialogueSignature)
