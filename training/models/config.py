"""``ModelConfig``: everything that shapes a model. A checkpoint stores it, so export rebuilds the model alone."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from avemo.contract.geometry import HOP_LENGTH, N_FFT, N_MELS

# fusion methods and unimodal baselines (see training/fusion.py); the first three are the original set
FUSIONS = ("gated", "audio", "video", "late", "concat", "xattn", "uncertainty", "gated_uncertainty", "hierarchical")
VIDEO_POOLINGS = ("meanmax", "mean", "attention")


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
    # --- optional extensions; every default keeps the original model (same parameters, same forward)
    use_resnet_audio: bool = False  # ResNet18 (1-channel stem, no fc) on the log-mel instead of the light CNN
    use_resnet_video: bool = False  # torchvision ResNet18 per frame instead of the light per-frame CNN
    video_pooling: str = "meanmax"  # temporal pooling of frame features: one of VIDEO_POOLINGS
    spec_augment: bool = False  # SpecAugment on the log-mel, training mode only (never in the export)
    spec_freq_mask: int = 20  # each frequency mask covers 0..spec_freq_mask mel bins (uniform)
    spec_time_mask: int = 40  # each time mask covers 0..spec_time_mask frames (uniform)
    spec_num_masks: int = 1  # number of frequency masks and of time masks per example
    variational: bool = False  # variational embedding heads (mu / logvar); forced on by the uncertainty fusions
    uncertainty_temperature: float = 1.0  # T in softmax((1 / sigma) / T) of the uncertainty fusions
    gate_alpha: float = 0.5  # gated_uncertainty: w = alpha * w_uncertainty + (1 - alpha) * w_gate
    xattn_heads: int = 4  # attention heads of the cross-modal attention (embed_dim must be divisible)
    bottleneck_dim: int = 0  # hierarchical fusion bottleneck; 0 = embed_dim // 2
    contrastive_proj_dim: int = 0  # >0: output projected embeddings z_audio / z_video [B, dim] for InfoNCE

    def to_dict(self) -> dict:
        d = asdict(self)
        d["audio_channels"] = list(self.audio_channels)
        d["video_channels"] = list(self.video_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("audio_channels", "video_channels"):
            if k in kw:
                kw[k] = tuple(int(x) for x in kw[k])
        return cls(**kw)
