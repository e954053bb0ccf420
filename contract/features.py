"""The serving contract of a feature model (text / audio / vision feature sequences of MOSI, MOSEI, SIMS).

The clip model's table (``contract.tensors``) generalised to named modalities. One model's tensors, batch
first, in this order:

| tensor | dtype | dims (batch first) | meaning |
|---|---|---|---|
| ``text`` / ``audio`` / ``vision`` | FP32 | [B, L_m, D_m] | features, zero padded after the valid steps |
| ``<name>_lengths`` | INT64 | [B, 1] | valid steps of that input, 0..L_m (0 is read as 1: one zero step) |
| ``modality_mask`` | FP32 | [B, M] | 1 = modality present; a missing one is zeros, mask 0; one at least present |
| ``prediction`` | FP32 | [B, 1] | regression: the sentiment value (MOSEI in [-3, 3]) |
| ``probs`` | FP32 | [B, C] | classification: class probabilities; ``labels.txt`` via ``label_filename`` |
| ``modality_weights`` | FP32 | [B, M] | how much each modality drove this prediction |

Only the modalities a model reads are inputs, in the order text, audio, vision. L_m is fixed (the padded
length of the training file, so Triton's dynamic batcher can group requests; the lengths input says how
much of it is real), D_m is the file's feature size. Both are recorded in the checkpoint and, as config
parameters, in the served config, which is where a client reads them (``FeatureSignature.from_parameters``).
The model's modality ``video`` is served as ``vision`` (MMSA's name for the facial features).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from avemo.contract.tensors import MODALITY_MASK, MODALITY_WEIGHTS, PROBS, TensorSpec

PREDICTION = "prediction"
LENGTHS_SUFFIX = "_lengths"
SERVED_NAMES = {"text": "text", "audio": "audio", "video": "vision"}  # model modality -> served tensor name
MODEL_NAMES = {v: k for k, v in SERVED_NAMES.items()}  # served tensor name -> model modality
KIND = "features"  # the ``kind`` parameter of a feature model's config ("clip" for the clip model)
TASKS = ("regression", "classification")


def lengths_name(served: str) -> str:
    """``text`` -> ``text_lengths``."""
    return served + LENGTHS_SUFFIX


def _pairs(text: str, what: str) -> dict[str, int]:
    """``"text:768,audio:74"`` -> {"text": 768, "audio": 74}; ValueError naming ``what`` otherwise."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition(":")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"parameter {what} {text!r}: expected name:int pairs, e.g. text:768,audio:74")
        out[name.strip()] = int(value)
    return out


@dataclass(frozen=True)
class FeatureSignature:
    """What one served feature model takes and gives: modalities (model names, in text-audio-video order),
    each one's feature size and padded length, the task and the class names (``("sentiment",)`` for
    regression). Everything the config, the warm-up, the export examples and the client need."""

    modalities: tuple[str, ...]  # model modality names, e.g. ("text", "audio", "video")
    dims: dict[str, int]  # modality -> D_m, features per step
    seq_lens: dict[str, int]  # modality -> L_m, padded steps
    task: str  # "regression" | "classification"
    labels: tuple[str, ...]  # class names; ("sentiment",) for regression
    dataset: str = ""  # mosi | mosei | sims: what the metrics of this model mean
    layout: str = "mmsa"  # the file layout the model was trained on
    extra: dict[str, str] = field(default_factory=dict, compare=False)  # other config parameters, as served

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r}: expected one of {TASKS}")
        if not self.modalities or any(m not in SERVED_NAMES for m in self.modalities):
            raise ValueError(f"modalities {self.modalities}: names among {tuple(SERVED_NAMES)}")
        for m in self.modalities:
            if int(self.dims.get(m, 0)) < 1 or int(self.seq_lens.get(m, 0)) < 1:
                raise ValueError(
                    f"modality {m}: feature size and padded length must be >= 1 ({self.dims}, {self.seq_lens})"
                )
        if self.task == "regression" and len(self.labels) != 1:
            raise ValueError(f"a regression model has one output name, got labels {self.labels}")

    @property
    def served(self) -> tuple[str, ...]:
        """Served tensor names of the modalities (``video`` -> ``vision``), in mask order."""
        return tuple(SERVED_NAMES[m] for m in self.modalities)

    @property
    def output_name(self) -> str:
        """``prediction`` (regression) or ``probs`` (classification)."""
        return PREDICTION if self.task == "regression" else PROBS

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """Input specs with concrete dims (no batch dim), in the order of the exported graph's arguments."""
        specs: list[TensorSpec] = []
        for m, s in zip(self.modalities, self.served):
            specs.append(TensorSpec(s, "FP32", (self.seq_lens[m], self.dims[m]), f"{m} features, zero padded"))
            specs.append(TensorSpec(lengths_name(s), "INT64", (1,), f"valid steps of {s}, 0..{self.seq_lens[m]}"))
        specs.append(
            TensorSpec(MODALITY_MASK, "FP32", (len(self.modalities),), f"1 = present ({', '.join(self.served)})")
        )
        return tuple(specs)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        first = (
            TensorSpec(PREDICTION, "FP32", (1,), "the regression value")
            if self.task == "regression"
            else TensorSpec(PROBS, "FP32", (len(self.labels),), "class probabilities; labels.txt")
        )
        weights = TensorSpec(MODALITY_WEIGHTS, "FP32", (len(self.modalities),), f"weights of {', '.join(self.served)}")
        return (first, weights)

    def parameters(self) -> dict[str, str]:
        """The config.pbtxt parameters that describe the model (read back by ``from_parameters``)."""
        return {
            "kind": KIND,
            "dataset": self.dataset,
            "layout": self.layout,
            "task": self.task,
            "modalities": ",".join(self.served),
            "feature_dims": ",".join(f"{s}:{self.dims[m]}" for m, s in zip(self.modalities, self.served)),
            "seq_lens": ",".join(f"{s}:{self.seq_lens[m]}" for m, s in zip(self.modalities, self.served)),
            "labels": ",".join(self.labels),
            "num_classes": str(len(self.labels) if self.task == "classification" else 1),
        }

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> FeatureSignature:
        """The signature a served config describes; ValueError naming what is missing or malformed."""
        if params.get("kind") != KIND:
            raise ValueError(f"not a feature model: parameter kind is {params.get('kind')!r}, expected {KIND!r}")
        missing = [k for k in ("task", "modalities", "feature_dims", "seq_lens", "labels") if not params.get(k)]
        if missing:
            raise ValueError(f"the served config lacks the parameter(s) {missing}")
        served = [s.strip() for s in params["modalities"].split(",") if s.strip()]
        unknown = [s for s in served if s not in MODEL_NAMES]
        if unknown:
            raise ValueError(f"parameter modalities names {unknown}; expected some of {sorted(MODEL_NAMES)}")
        dims, lens = _pairs(params["feature_dims"], "feature_dims"), _pairs(params["seq_lens"], "seq_lens")
        if set(dims) != set(served) or set(lens) != set(served):
            raise ValueError(f"parameters feature_dims {dims} / seq_lens {lens} do not cover the modalities {served}")
        own = set(cls.__dataclass_fields__) | {"kind", "modalities", "feature_dims", "seq_lens", "num_classes"}
        return cls(
            modalities=tuple(MODEL_NAMES[s] for s in served),
            dims={MODEL_NAMES[s]: d for s, d in dims.items()},
            seq_lens={MODEL_NAMES[s]: n for s, n in lens.items()},
            task=params["task"],
            labels=tuple(x for x in params["labels"].split(",") if x),
            dataset=params.get("dataset", ""),
            layout=params.get("layout", "mmsa"),
            extra={k: v for k, v in params.items() if k not in own},
        )
