"""``ModelConfig``: everything that shapes a model. A checkpoint stores it, so export rebuilds the model alone.

Fields with "help" metadata are also ``avemo train`` options (see ``avemo.contract.options``); the others are
set in code (tests, ``--tiny``) or from the training data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from avemo.contract.geometry import HOP_LENGTH, N_FFT, N_MELS

# fusion methods and unimodal baselines of the clip model (see training/models/fusion.py); the first three are the
# original set
FUSIONS = (
    "gated",
    "audio",
    "video",
    "late",
    "concat",
    "xattn",
    "uncertainty",
    "gated_uncertainty",
    "hierarchical",
)
FEATURE_BASELINES = ("text",)  # the text-only baseline of the feature datasets
DIALOGUE_FUSIONS = ("joyful",)  # conversation models only (IEMOCAP / MELD): see training/models/joyful.py
ALL_FUSIONS = FUSIONS + FEATURE_BASELINES + DIALOGUE_FUSIONS  # what --fusion accepts
VIDEO_POOLINGS = ("meanmax", "mean", "attention")
# encoders of the clip model (training/models/encoders.py; the speech transformers in training/models/pretrained.py)
SPEECH_ENCODER_NAMES = ("wav2vec2_base", "hubert_base", "wavlm_base_plus")
AUDIO_ENCODERS = ("cnn", "resnet18", *SPEECH_ENCODER_NAMES)
VIDEO_ENCODERS = ("cnn", "resnet18")
# what the fusions put in the model's outputs (training/models/fusion.py), for the loss-flag checks
UNIMODAL_FUSIONS = ("audio", "video", "text")  # one encoder: no cross-modal (contrastive) term
CLIP_MODALITIES = ("audio", "video")  # the clip model's inputs, in the serving contract's mask order
TASKS = ("classification", "regression")
FEATURE_ENCODERS = ("mlp", "lstm", "transformer")  # see training/models/feature_encoders.py
GATE_FUSIONS = ("hierarchical", "gated_uncertainty", "joyful")  # output "gate", read by the gate regulariser
RECONSTRUCTION_FUSIONS = ("hierarchical", "joyful")  # output recon* / target_*, read by the reconstruction loss
CONTEXTS = ("none", "full", "past")  # dialogue context: none, every utterance of the dialogue, past ones only
JOYFUL_VARIANTS = ("plain", "hierarchical")  # JOYFUL's AutoFusion, or the loss guides' hierarchical one (a gate)

HELP_SECTION = "model"  # help section of the options below


@dataclass
class ModelConfig:
    fusion: str = field(
        default="gated",
        metadata={"help": "fusion method or unimodal baseline", "choices": ALL_FUSIONS, "group": HELP_SECTION},
    )
    num_classes: int = 8  # 8 RAVDESS emotions or the 4-class mapping (set from TrainConfig.num_classes)
    # --- what the model reads and predicts (set from the data by the trainer; the defaults are the clip model)
    modalities: tuple[str, ...] = CLIP_MODALITIES  # input modalities = the columns of the mask [B, M], in order
    task: str = "classification"  # or "regression": one output (e.g. MOSEI sentiment in [-3, 3])
    input_dims: dict = field(default_factory=dict)  # feature models: modality -> feature size; empty = clip model
    seq_lens: dict = field(default_factory=dict)  # feature models: modality -> padded sequence length of the data
    feature_encoder: str = field(
        default="mlp",
        metadata={
            "help": "feature datasets: encoder of each modality's feature sequence (mlp over the masked mean, "
            "lstm, transformer)",
            "choices": FEATURE_ENCODERS,
            "group": HELP_SECTION,
        },
    )
    feature_dropout: float = 0.1  # feature encoders: dropout on their input features
    # --- conversations (IEMOCAP / MELD): set from the data except the options
    num_speakers: int = 0  # speakers a dialogue can have (IEMOCAP 2, MELD 9); 0 = not a dialogue model
    context: str = field(
        default="full",
        metadata={
            "help": "dialogue datasets: a Transformer over each dialogue's utterances under the fusion: full "
            "(past and future utterances), past (only what was said before: a live conversation), none "
            "(each utterance alone)",
            "choices": CONTEXTS,
            "group": HELP_SECTION,
        },
    )
    context_layers: int = 1  # Transformer layers of the dialogue context
    window_past: int = field(
        default=10,
        metadata={"help": "joyful: graph edges to this many earlier utterances", "group": HELP_SECTION},
    )
    window_future: int = field(
        default=10,
        metadata={
            "help": "joyful: graph edges to this many later utterances (--context past uses 0)",
            "group": HELP_SECTION,
        },
    )
    joyful_variant: str = field(
        default="hierarchical",
        metadata={
            "help": "joyful: AutoFusion as published (plain) or with the loss guides' modality gate and its "
            "regulariser (hierarchical)",
            "choices": JOYFUL_VARIANTS,
            "group": HELP_SECTION,
        },
    )
    transformer_layers: int = 1  # feature transformer encoder: layers
    transformer_heads: int = 4  # feature transformer encoder: attention heads (embed_dim must be divisible)
    n_fft: int = N_FFT  # STFT size of the in-graph log-mel front end
    hop_length: int = HOP_LENGTH  # STFT hop (samples)
    n_mels: int = N_MELS  # mel bands
    audio_channels: tuple[int, ...] = (16, 32, 64, 96)  # light audio CNN widths (one conv block each)
    video_channels: tuple[int, ...] = (16, 32, 48, 64)  # light per-frame video CNN widths
    embed_dim: int = 128  # per-modality embedding size fed to the fusion
    dropout: float = 0.3  # dropout in the classification heads
    modality_dropout: float = field(
        default=0.2,
        metadata={"help": "per-modality probability of dropping a modality in training", "group": HELP_SECTION},
    )
    unimodal_fallback: bool = field(
        default=True,
        metadata={
            "help": "a window with one modality missing is answered by the present modality's own auxiliary head "
            "(fusion models only; --no-unimodal_fallback: the fused head with that input zeroed)",
            "group": HELP_SECTION,
        },
    )
    gate_init_audio: float = 0.3  # initial share of the first modality in the gates (clips: audio; video favoured)
    logmel_mean: float = -6.0  # log-mel normalisation, overwritten from training data statistics
    logmel_std: float = 4.0
    # --- optional extensions; every default keeps the original model (same parameters, same forward)
    audio_encoder: str = field(
        default="cnn",
        metadata={
            "help": "audio encoder: the light log-mel CNN, ResNet18 on the log-mel, or a pretrained speech "
            "transformer (16 kHz waveform in; needs the pretrained extra)",
            "choices": AUDIO_ENCODERS,
            "group": HELP_SECTION,
        },
    )
    audio_layers: int = field(
        default=0,
        metadata={
            "help": "speech encoders: keep the first K of their 12 transformer layers (0 = all; fewer = cheaper)",
            "group": HELP_SECTION,
        },
    )
    audio_pretrained: str = field(
        default="default",
        metadata={
            "help": "speech encoder weights: default (download through the Hugging Face hub cache), none (random, "
            "same architecture) or PATH (a local folder or state dict file)",
            "group": HELP_SECTION,
        },
    )
    video_encoder: str = field(
        default="cnn",
        metadata={
            "help": "video encoder: the light per-frame CNN or torchvision ResNet18 per frame",
            "choices": VIDEO_ENCODERS,
            "group": HELP_SECTION,
        },
    )
    video_pretrained: str = field(
        default="imagenet",
        metadata={
            "help": "resnet18 video encoder weights: imagenet (torchvision download and cache), none (random) or "
            "PATH (a state dict file)",
            "group": HELP_SECTION,
        },
    )
    video_pooling: str = field(
        default="meanmax",
        metadata={"help": "temporal pooling of frame features", "choices": VIDEO_POOLINGS, "group": HELP_SECTION},
    )
    spec_augment: bool = field(
        default=False,
        metadata={"help": "SpecAugment on the log-mel in training (never in the export)", "group": HELP_SECTION},
    )
    spec_freq_mask: int = 20  # each frequency mask covers 0..spec_freq_mask mel bins (uniform)
    spec_time_mask: int = 40  # each time mask covers 0..spec_time_mask frames (uniform)
    spec_num_masks: int = 1  # number of frequency masks and of time masks per example
    variational: bool = field(
        default=False,
        metadata={
            "help": "variational embedding heads (mu / logvar); always on for the uncertainty fusions",
            "group": HELP_SECTION,
        },
    )
    uncertainty_temperature: float = 1.0  # T in softmax((1 / sigma) / T) of the uncertainty fusions
    gate_alpha: float = field(
        default=0.5,
        metadata={"help": "gated_uncertainty: w = alpha * w_uncertainty + (1 - alpha) * w_gate", "group": HELP_SECTION},
    )
    xattn_heads: int = 4  # attention heads of the cross-modal attention (embed_dim must be divisible)
    bottleneck_dim: int = 0  # hierarchical fusion bottleneck; 0 = embed_dim // 2
    contrastive_proj_dim: int = field(
        default=0,
        metadata={
            "help": "size of the projected embeddings z_audio / z_video for the InfoNCE loss, 0 = off",
            "group": HELP_SECTION,
        },
    )

    @property
    def num_outputs(self) -> int:
        """Size of the model's output: the number of classes, or 1 for regression."""
        return 1 if self.task == "regression" else self.num_classes

    @property
    def is_dialogue_model(self) -> bool:
        """True for a model over whole dialogues (one feature vector per utterance, speakers, context)."""
        return self.num_speakers > 0

    @property
    def is_feature_model(self) -> bool:
        """True for a model over pre-extracted feature sequences (text / audio / video features)."""
        return bool(self.input_dims)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("audio_channels", "video_channels", "modalities"):
            d[k] = list(getattr(self, k))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw.setdefault("unimodal_fallback", False)  # checkpoints from before the option answered with the fused head
        # checkpoints that chose ResNet18 encoders by flag: random-initialised trunks, their weights in the checkpoint
        if d.get("use_resnet_audio"):
            kw["audio_encoder"] = "resnet18"
        if d.get("use_resnet_video"):
            kw.setdefault("video_encoder", "resnet18")
            kw.setdefault("video_pretrained", "none")
        for k in ("audio_channels", "video_channels"):
            if k in kw:
                kw[k] = tuple(int(x) for x in kw[k])
        if "modalities" in kw:
            kw["modalities"] = tuple(kw["modalities"])
        return cls(**kw)
