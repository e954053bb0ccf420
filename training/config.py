"""Config dataclasses. A checkpoint stores ``ModelConfig`` so export can rebuild the model alone."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from contract.geometry import N_FFT, N_MELS, HOP_LENGTH


FUSIONS = ("gated", "audio", "video")


@dataclass
class ModelConfig:
    fusion: str = "gated"  # one of FUSIONS: gated fusion or a unimodal baseline
    num_classes: int = 8  # 8 RAVDESS emotions or the 4-class mapping
    n_fft: int = N_FFT  # STFT size of the in-graph log-mel front end
    hop_length: int = HOP_LENGTH  # STFT hop (samples)
    n_mels: int = N_MELS  # mel bands
    audio_channels: tuple[int, ...] = (16, 32, 64, 96)  # light audio CNN widths (one conv block each)
    video_channels: tuple[int, ...] = (16, 32, 48, 64)  # light per-frame video CNN widths
    embed_dim: int = 128  # per-modality embedding size fed to the fusion
    dropout: float = 0.3  # dropout in the classification heads
    modality_dropout: float = 0.2  # per-modality probability of dropping a modality in training
    gate_init_audio: float = 0.3  # initial audio share of the gate (video favoured at start)
    logmel_mean: float = -6.0  # log-mel normalisation, overwritten from training data statistics
    logmel_std: float = 4.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["audio_channels"] = list(self.audio_channels)
        d["video_channels"] = list(self.video_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("audio_channels", "video_channels"):
            if k in kw:
                kw[k] = tuple(int(x) for x in kw[k])
        return cls(**kw)


@dataclass
class TrainConfig:
    data_root: str = "data/corpus"  # RAVDESS-layout folder (Actor_XX/...)
    cache_dir: str = "cache"  # decoded-window cache (built once, reused)
    out_dir: str = "runs/gated"  # checkpoints, metrics.json, plots
    num_classes: int = 8
    split_mode: str = "actor"  # "actor" (fixed actor lists), "kfold" or "stratified"
    fold: int = 0  # k-fold by actor: which fold is the test fold
    folds: int = 5
    epochs: int = 20
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-2
    use_cosine_annealing: bool = True
    early_stopping_patience: int = 5  # epochs without val macro-F1 improvement before stopping
    aux_weight: float = 0.3  # weight of the unimodal auxiliary heads' cross-entropy (fusion models)
    class_weight: bool = True  # inverse-frequency class weights in the cross-entropy
    seed: int = 0
    num_workers: int = 0
    max_train_batches: int = 0  # 0 = all; >0 caps batches per epoch (tests)
    resume: bool = False
    progress: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d
