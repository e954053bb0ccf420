"""``TrainConfig``: one training run (data, split, optimisation, logging, hardware) plus its ModelConfig.

Every field says what it does in its "help" metadata; the fields with help are also the options of
``avemo train`` / ``evaluate`` / ``compare`` / ``cache`` (``avemo.contract.options.add_fields``), so a default
is written once, here. ``check_config`` refuses values that cannot work or would do nothing;
``train()`` calls it before doing any work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from avemo.contract.media import FACE_CROP_METHODS
from avemo.training.data.dataset import VIDEO_AUGMENTS
from avemo.training.data.ravdess import SPLIT_MODES
from avemo.training.losses import total as losses_total
from avemo.training.losses.total import LossWeights
from avemo.training.losses.weighting import MODES
from avemo.training.models import config as model_config
from avemo.training.models.config import (
    ALL_FUSIONS,
    AUDIO_ENCODERS,
    CONTEXTS,
    DIALOGUE_FUSIONS,
    SPEECH_ENCODER_NAMES,
    UNIMODAL_FUSIONS,
    VIDEO_ENCODERS,
    VIDEO_POOLINGS,
    ModelConfig,
)
from avemo.training.models.fusion import VARIATIONAL_FUSIONS
from avemo.training.models.pretrained import check_sources
from avemo.training.train.runtime import AMP_MODES, CHANNELS_LAST_MODES, DEVICES

WEIGHT_DECAY_SCOPES = ("all", "matrices")  # see avemo.training.train.loop.make_optimizer
# --dataset: the clips (RAVDESS layout), an utterance-level feature file (MMSA pickle) or a conversation
# feature file (IEMOCAP / MELD tuples of DialogueRNN, COGMEN and MMGCN)
CLIP_DATASETS = ("ravdess",)
FEATURE_DATASETS = ("mosi", "mosei", "sims")
DIALOGUE_DATASETS = ("iemocap", "iemocap_4", "meld", "meld_sentiment")
DATASETS = CLIP_DATASETS + FEATURE_DATASETS + DIALOGUE_DATASETS
TASK_CHOICES = ("auto", "classification", "regression")
CLASS_COUNTS = {
    "ravdess": (8, 4),
    "mosi": (2, 3, 7),
    "mosei": (2, 3, 7),
    "sims": (2, 3, 5),
    "iemocap": (6,),
    "iemocap_4": (4,),
    "meld": (7,),
    "meld_sentiment": (3,),
}

# help sections, in the order ``avemo train --help`` shows them
DATA = "data and split"
OPTIMISATION = "optimisation"
LOSSES = losses_total.HELP_SECTION  # shared with the LossWeights options
MODEL = model_config.HELP_SECTION
RUN = "output and logging"
HARDWARE = "hardware (torchrun --nproc_per_node N avemo train ... runs DDP: NCCL on GPU, gloo on CPU)"
HELP_SECTIONS = (DATA, MODEL, OPTIMISATION, LOSSES, RUN, HARDWARE)


def _opt(help: str, group: str, **more) -> dict:
    return {"help": help, "group": group, **more}


@dataclass
class TrainConfig:
    dataset: str = field(
        default="ravdess",
        metadata=_opt(
            "ravdess: audio-video clips in RAVDESS layout; mosi / mosei / sims: an MMSA feature pickle "
            "(text, audio, video features); iemocap / iemocap_4 / meld / meld_sentiment: a conversation feature "
            "pickle (DialogueRNN / COGMEN / MMGCN tuple), one emotion per utterance",
            DATA,
            choices=DATASETS,
        ),
    )
    data_root: str = field(
        default="data/corpus",
        metadata=_opt("RAVDESS-layout folder (Actor_XX/...), or the feature file (aligned_50.pkl, ...)", DATA),
    )
    modalities: str = field(
        default="",
        metadata=_opt(
            "modalities to read, letters of a(udio) t(ext) v(ideo): atv, at, av, tv, a, t, v "
            "(default: all the dataset has; one letter = that modality's unimodal model)",
            DATA,
        ),
    )
    task: str = field(
        default="auto",
        metadata=_opt(
            "auto = classification for ravdess, regression of the sentiment score for mosi / mosei / sims",
            DATA,
            choices=TASK_CHOICES,
        ),
    )
    cache_dir: str = field(default="cache", metadata=_opt("decoded-clip cache (built once, reused)", DATA))
    face_crop: str = field(
        default="auto",
        metadata=_opt("face crop of the cached frames (part of the cache key)", DATA, choices=FACE_CROP_METHODS),
    )
    out_dir: str = field(
        default="runs/gated",
        metadata=_opt("run folder: checkpoints, metrics.json, plots", RUN, default_text="runs/<fusion>"),
    )
    video_augment: str = field(
        default="identity",
        metadata=_opt(
            "training-time frame augmentation: basic (flip, shift, brightness/contrast) or identity "
            "(basic + any hue, saturation, grey, head scale/aspect/roll: what differs between people)",
            DATA,
            choices=VIDEO_AUGMENTS,
        ),
    )
    num_classes: int = field(
        default=8,
        metadata=_opt(
            "ravdess: 8 emotions or the 4-class mapping; features (classification): 2 (negative / non-negative), "
            "3 (negative / neutral / positive), 7 (the rounded score; sims: 5); conversations: fixed by the "
            "dataset (iemocap 6, iemocap_4 4, meld 7, meld_sentiment 3)",
            DATA,
            choices=(2, 3, 4, 5, 6, 7, 8),
            default_text="8; 7 for feature classification; the dataset's for conversations",
        ),
    )
    split_mode: str = field(
        default="actor",
        metadata=_opt("actor (fixed actor lists), kfold (by actor) or stratified", DATA, choices=SPLIT_MODES),
    )
    fold: int = field(default=0, metadata=_opt("test fold for --split_mode kfold", DATA))
    folds: int = field(default=5, metadata=_opt("number of folds for --split_mode kfold", DATA))
    epochs: int = field(default=20, metadata=_opt("max epochs", OPTIMISATION))
    batch_size: int = field(default=32, metadata=_opt("windows per step (per process under torchrun)", OPTIMISATION))
    lr: float = field(default=2e-3, metadata=_opt("AdamW learning rate", OPTIMISATION))
    weight_decay: float = field(default=1e-2, metadata=_opt("AdamW weight decay", OPTIMISATION))
    weight_decay_scope: str = field(
        default="all",
        metadata=_opt(
            "parameters weight decay applies to: all, or matrices (tensors of 2+ dims: no norms, biases, gate bias)",
            OPTIMISATION,
            choices=WEIGHT_DECAY_SCOPES,
        ),
    )
    use_cosine_annealing: bool = field(default=True, metadata=_opt("cosine LR schedule", OPTIMISATION))
    # 2 epochs: without warm-up the video CNN sat at chance for 3-5 epochs (and collapsed at lr 5e-3 or batch 16)
    warmup_epochs: float = field(
        default=2.0,
        metadata=_opt("linear LR warm-up from 0 over this many epochs (per step; 0 = off)", OPTIMISATION),
    )
    early_stopping_patience: int = field(
        default=5, metadata=_opt("epochs without val macro-F1 gain before stopping", OPTIMISATION)
    )
    # pretrained encoders (--audio_encoder wav2vec2_base|..., --video_encoder resnet18): see docs/real_recordings.md
    freeze_encoders: bool = field(
        default=False,
        metadata=_opt(
            "keep the pretrained encoders' weights fixed (speech transformer, video ResNet18): only the heads train",
            OPTIMISATION,
        ),
    )
    unfreeze_after: int = field(
        default=0,
        metadata=_opt("with --freeze_encoders: train the encoders too from this epoch on (0 = never)", OPTIMISATION),
    )
    encoder_lr: float = field(
        default=1e-5,
        metadata=_opt("learning rate of the pretrained encoders' weights (the heads use --lr)", OPTIMISATION),
    )
    train_speech_frontend: bool = field(
        default=False,
        metadata=_opt("also train a speech encoder's convolutional front end (frozen by default)", OPTIMISATION),
    )
    cache_features: bool = field(
        default=True,
        metadata=_opt(
            "with --freeze_encoders and no --unfreeze_after: run the frozen encoders once per window and train "
            "the heads on the cached features (fixed windows, no augmentation; --no-cache_features keeps both)",
            OPTIMISATION,
        ),
    )
    losses: dict = field(default_factory=dict)  # LossWeights fields (training/losses/total.py); empty = defaults
    loss_weighting: str = field(
        default="fixed", metadata=_opt("adaptive multipliers of the loss parts", LOSSES, choices=MODES)
    )
    loss_weighting_momentum: float = field(
        default=0.9, metadata=_opt("EMA momentum for --loss_weighting inverse_ema", LOSSES)
    )
    loss_weighting_every: int = field(
        default=50, metadata=_opt("recomputation period in steps for --loss_weighting grad_balance", LOSSES)
    )
    teacher_audio: str = field(
        default="",
        metadata=_opt("frozen audio-only checkpoint distilled into the audio head (needs --delta_va)", LOSSES),
    )
    teacher_video: str = field(
        default="",
        metadata=_opt("frozen video-only checkpoint distilled into the video head (needs --delta_va)", LOSSES),
    )
    teacher_text: str = field(
        default="",
        metadata=_opt("frozen text-only checkpoint distilled into the text head (needs --delta_va)", LOSSES),
    )
    tensorboard: bool = field(default=True, metadata=_opt("TensorBoard event files in <out_dir>/tensorboard", RUN))
    wandb: bool = field(
        default=False,
        metadata=_opt(
            "also log to Weights & Biases (offline into <out_dir>/wandb without an API key; never fails the run)", RUN
        ),
    )
    wandb_project: str = field(default="avemo", metadata=_opt("W&B project", RUN))
    device: str = field(default="auto", metadata=_opt("auto = CUDA when present", HARDWARE, choices=DEVICES))
    amp: str = field(
        default="auto",
        metadata=_opt("mixed precision: bf16 autocast (auto = on for a bf16-capable GPU)", HARDWARE, choices=AMP_MODES),
    )
    channels_last: str = field(
        default="auto",
        metadata=_opt("NHWC memory format for the CNNs (auto = on with CUDA)", HARDWARE, choices=CHANNELS_LAST_MODES),
    )
    seed: int = field(default=0, metadata=_opt("random seed: split, initialisation, data order, noise", DATA))
    num_workers: int = 0  # DataLoader worker processes
    num_threads: int = 0  # torch CPU threads; 0 = cores / processes (avemo search sets cores / workers)
    max_train_batches: int = field(
        default=0, metadata=_opt("0 = all; >0 caps batches per epoch (tests)", OPTIMISATION, hidden=True)
    )
    resume: bool = field(default=False, metadata=_opt("continue from <out_dir>/last.pt", RUN))
    progress: bool = field(default=True, metadata=_opt("no progress bars", RUN, flag="no_progress", negate=True))
    model: ModelConfig = field(default_factory=ModelConfig)

    def data_options(self) -> dict:
        """The keyword arguments of ``avemo.training.data.prepare.prepare_data`` this run decides."""
        keys = ("num_classes", "split_mode", "folds", "fold", "seed", "face_crop", "video_augment")
        return {k: getattr(self, k) for k in keys}

    @property
    def is_features(self) -> bool:
        """A feature file (MMSA pickle or conversation tuple) rather than clips."""
        return self.dataset in FEATURE_DATASETS or self.is_dialogue

    @property
    def is_dialogue(self) -> bool:
        """A conversation feature file (IEMOCAP / MELD): batches of whole dialogues."""
        return self.dataset in DIALOGUE_DATASETS

    @property
    def resolved_task(self) -> str:
        """``task`` with "auto" decided: regression for the sentiment scores of MOSI / MOSEI / SIMS,
        classification for the clips and the conversations."""
        if self.task != "auto":
            return self.task
        return "regression" if self.dataset in FEATURE_DATASETS else "classification"

    def teachers(self) -> dict[str, str]:
        """{modality: checkpoint path} of the given ``--teacher_*`` flags."""
        return {m: getattr(self, f"teacher_{m}") for m in ("text", "audio", "video") if getattr(self, f"teacher_{m}")}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d


def variational_encoders(model: ModelConfig) -> bool:
    """The model has mu / logvar outputs (what the KL term reads)."""
    return model.variational or model.fusion in VARIATIONAL_FUSIONS


def graph_library_installed() -> bool:
    """torch_geometric (the optional ``graph`` dependency group, JOYFUL's relational graph) can be imported."""
    try:
        import torch_geometric  # noqa: F401
    except ImportError:
        return False
    return True


def check_config(cfg: TrainConfig) -> None:
    """Refuse a configuration that cannot work or would silently do nothing (ValueError naming the flag).

    Only values are checked here; flags that were given but do not apply are refused by the CLI.
    """
    m, lw = cfg.model, LossWeights.from_dict(cfg.losses)
    for name, value, allowed in (
        ("--split_mode", cfg.split_mode, SPLIT_MODES),
        ("--face_crop", cfg.face_crop, FACE_CROP_METHODS),
        ("--video_augment", cfg.video_augment, VIDEO_AUGMENTS),
        ("--dataset", cfg.dataset, DATASETS),
        ("--task", cfg.task, TASK_CHOICES),
        ("--loss_weighting", cfg.loss_weighting, MODES),
        ("--device", cfg.device, DEVICES),
        ("--amp", cfg.amp, AMP_MODES),
        ("--channels_last", cfg.channels_last, CHANNELS_LAST_MODES),
        ("--fusion", m.fusion, ALL_FUSIONS),
        ("--video_pooling", m.video_pooling, VIDEO_POOLINGS),
        ("--weight_decay_scope", cfg.weight_decay_scope, WEIGHT_DECAY_SCOPES),
        ("--audio_encoder", m.audio_encoder, AUDIO_ENCODERS),
        ("--video_encoder", m.video_encoder, VIDEO_ENCODERS),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))} (got {value!r})")
    if cfg.resolved_task == "classification" and cfg.num_classes not in CLASS_COUNTS[cfg.dataset]:
        raise ValueError(
            f"--num_classes must be one of {', '.join(map(str, CLASS_COUNTS[cfg.dataset]))} for --dataset "
            f"{cfg.dataset} (got {cfg.num_classes})"
        )
    if cfg.dataset not in FEATURE_DATASETS and cfg.resolved_task != "classification":
        raise ValueError(
            "--task regression needs a feature dataset with a sentiment score, mosi / mosei / sims "
            f"(got --dataset {cfg.dataset})"
        )
    if m.fusion in DIALOGUE_FUSIONS and not cfg.is_dialogue:
        raise ValueError(
            f"--fusion {m.fusion} models conversations: it needs --dataset {' / '.join(DIALOGUE_DATASETS)} "
            f"(got --dataset {cfg.dataset})"
        )
    if m.fusion == "joyful" and not graph_library_installed():
        raise ValueError(
            "--fusion joyful needs torch_geometric for its relational graph: pip install -e '.[graph]' "
            "(every other fusion works without it)"
        )
    if m.context not in CONTEXTS:
        raise ValueError(f"--context must be one of {', '.join(CONTEXTS)} (got {m.context!r})")

    if cfg.modalities:
        letters = set("av") if cfg.dataset in CLIP_DATASETS else set("atv")
        if not set(cfg.modalities) <= letters or len(set(cfg.modalities)) != len(cfg.modalities):
            raise ValueError(
                f"--modalities takes each of the letters {''.join(sorted(letters))} at most once for --dataset "
                f"{cfg.dataset} (got {cfg.modalities!r})"
            )
        if cfg.dataset in CLIP_DATASETS and len(cfg.modalities) == 1:
            raise ValueError(f"--modalities {cfg.modalities}: for clips, use --fusion audio or --fusion video")
    check_sources(m)
    if m.spec_augment and m.audio_encoder in SPEECH_ENCODER_NAMES:
        raise ValueError(f"--spec_augment masks the log-mel; --audio_encoder {m.audio_encoder} reads the waveform")
    if cfg.unfreeze_after and not cfg.freeze_encoders:
        raise ValueError("--unfreeze_after needs --freeze_encoders (the encoders train from the start without it)")
    if cfg.unfreeze_after < 0 or cfg.encoder_lr <= 0:
        raise ValueError(f"--unfreeze_after must be >= 0 and --encoder_lr > 0 (got {cfg.unfreeze_after}, "
                         f"{cfg.encoder_lr})")  # fmt: skip
    if cfg.warmup_epochs < 0:
        raise ValueError(f"--warmup_epochs must be >= 0 (got {cfg.warmup_epochs})")
    if cfg.split_mode == "kfold" and not 0 <= cfg.fold < cfg.folds:
        raise ValueError(f"--fold must be in 0..{cfg.folds - 1} for --folds {cfg.folds} (got {cfg.fold})")
    teachers = [f"--teacher_{k}" for k in cfg.teachers()]
    if teachers and lw.distill <= 0:
        raise ValueError(
            f"{teachers[0]} needs --delta_va > 0 (the distillation weight; got {lw.distill}): "
            "without it the teacher would run every step for nothing"
        )
    if lw.distill != 0 and not teachers:
        raise ValueError("--delta_va needs a teacher: --teacher_audio, --teacher_video and/or --teacher_text")
    if teachers and m.fusion in UNIMODAL_FUSIONS:
        raise ValueError(
            f"{teachers[0]} distils into the unimodal auxiliary heads of a fusion model; --fusion {m.fusion} has none"
        )
    if lw.kl != 0 and not variational_encoders(m):
        raise ValueError(
            f"--kl_weight needs variational encoders: --variational or --fusion "
            f"{' / '.join(sorted(VARIATIONAL_FUSIONS))} (got --fusion {m.fusion})"
        )
    if lw.focal_alpha is not None and cfg.resolved_task == "classification" and len(lw.focal_alpha) != cfg.num_classes:
        raise ValueError(
            f"--focal_alpha needs one value per class: {cfg.num_classes} for --num_classes {cfg.num_classes} "
            f"(got {len(lw.focal_alpha)})"
        )
