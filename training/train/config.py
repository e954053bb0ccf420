"""``TrainConfig``: one training run (data, split, optimisation, logging, hardware) plus its ModelConfig."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from avemo.training.models.config import ModelConfig


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
    losses: dict = field(default_factory=dict)  # LossWeights fields (training/losses.py); empty = defaults
    loss_weighting: str = "fixed"  # fixed | inverse_ema | log_norm | grad_balance (training/loss_weighting.py)
    loss_weighting_momentum: float = 0.9  # EMA momentum for inverse_ema
    loss_weighting_every: int = 50  # grad_balance recomputation period (steps)
    teacher_audio: str = ""  # frozen audio-only teacher checkpoint distilled into the audio head (--delta_va)
    teacher_video: str = ""  # frozen video-only teacher checkpoint distilled into the video head
    tensorboard: bool = True  # TensorBoard event files in <out_dir>/tensorboard
    wandb: bool = False  # Weights & Biases logging (offline in <out_dir>/wandb when no API key; never fails the run)
    wandb_project: str = "avemo"  # W&B project name
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda; see training/runtime.py
    amp: str = "auto"  # auto (bf16 autocast on a bf16-capable GPU) | bf16 | off
    channels_last: str = "auto"  # auto (on with CUDA) | on | off: NHWC conv weights
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
