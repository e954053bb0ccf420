"""Audio and video encoders. Each maps one modality to an embedding [B, D].

Light CNNs (CPU friendly, the defaults) and ResNet18 variants (``--audio_encoder resnet18`` /
``--video_encoder resnet18``; the pretrained speech transformers are in ``pretrained.py``). Every encoder
also has ``forward_with_sequence`` -> (embedding [B, D], tokens [B, T, D']) for the cross-attention fusion
when built with ``sequence_dim > 0``; the extra token projection only exists then, so the default parameter
set is unchanged.

Also here: ``SpecAugment`` (training-mode log-mel masking, a no-op in eval and therefore absent from
the export), ``TemporalPool`` (frame pooling) and ``VariationalHead`` (mu / logvar on an embedding).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from avemo.training.models.config import VIDEO_POOLINGS
from avemo.training.models.frontend import LogMel

if TYPE_CHECKING:
    from torchvision.models import ResNet


def conv_block(c_in: int, c_out: int, stride: int = 1, pool: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SpecAugment(nn.Module):
    """SpecAugment (Park et al. 2019) without time warping, on a normalised log-mel [B, 1, M, T] or [B, M, T].

    Training mode only: ``num_masks`` frequency masks of width ~ U{0..freq_mask} mel bins and
    ``num_masks`` time masks of width ~ U{0..time_mask} frames per example, at uniform positions;
    masked cells are set to 0 (the mean of the normalised log-mel). In eval mode the input is
    returned unchanged (a Python branch on ``self.training``), so an exported graph never contains it.
    """

    def __init__(self, freq_mask: int = 20, time_mask: int = 40, num_masks: int = 1):
        super().__init__()
        self.freq_mask, self.time_mask, self.num_masks = int(freq_mask), int(time_mask), int(num_masks)

    @staticmethod
    def _band(batch: int, size: int, max_width: int, device: torch.device) -> torch.Tensor:
        """[B, size] bool: one random band of width U{0..max_width} per row."""
        width = torch.randint(0, min(max_width, size) + 1, (batch, 1), device=device)
        start = (torch.rand(batch, 1, device=device) * (size - width + 1).float()).floor().long()
        idx = torch.arange(size, device=device)[None]
        return (idx >= start) & (idx < start + width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.num_masks <= 0:
            return x
        b, m, t = x.shape[0], x.shape[-2], x.shape[-1]
        masked = torch.zeros(b, m, t, dtype=torch.bool, device=x.device)
        for _ in range(self.num_masks):
            masked |= self._band(b, m, self.freq_mask, x.device)[:, :, None]
            masked |= self._band(b, t, self.time_mask, x.device)[:, None, :]
        masked = masked.view(b, *([1] * (x.dim() - 3)), m, t)
        return torch.where(masked, torch.zeros_like(x), x)


class TemporalPool(nn.Module):
    """Frame features [B, C, F] -> [B, out_dim].

    "meanmax": [mean_t ; max_t] (out_dim 2C, the light video CNN's original pooling);
    "mean": mean over frames (C); "attention": learned softmax weights over frames,
    a_t = softmax_t(w . x_t), pooled = sum_t a_t x_t (C). The scorer has no bias (softmax is
    shift-invariant, a bias would never get a gradient).
    """

    def __init__(self, channels: int, mode: str = "meanmax"):
        super().__init__()
        if mode not in VIDEO_POOLINGS:
            raise ValueError(f"video pooling must be one of {VIDEO_POOLINGS}, got {mode!r}")
        self.mode = mode
        self.out_dim = 2 * channels if mode == "meanmax" else channels
        self.score = nn.Linear(channels, 1, bias=False) if mode == "attention" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "meanmax":
            return torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1)
        if self.mode == "mean":
            return x.mean(dim=2)
        xt = x.transpose(1, 2)  # [B, F, C]
        assert self.score is not None  # mode "attention"
        a = torch.softmax(self.score(xt), dim=1)  # [B, F, 1]
        return (a * xt).sum(dim=1)


class SequenceEncoder(nn.Module):
    """Shared head of every encoder: ``features`` -> [B, C, T] (T = time steps or frames), ``pooled``
    -> [B, C'] and ``proj`` -> embedding [B, D]; with ``seq_proj`` (built when ``sequence_dim > 0``)
    also tokens [B, T, sequence_dim] from the same pass."""

    proj: nn.Linear
    seq_proj: nn.Linear | None
    # True while training on cached features (training/train/frozen.py): the input already is ``features(x)``
    features_given: bool = False

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.features_given else self.features(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pooled(self._features(x)))  # [B, D]

    def forward_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens [B, T, sequence_dim] only."""
        return self.forward_with_sequence(x)[1]

    def forward_with_sequence(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding [B, D], tokens [B, T, sequence_dim]) from one pass through the encoder."""
        if self.seq_proj is None:
            raise RuntimeError(f"{type(self).__name__} was built without sequence_dim: no token projection")
        x = self._features(x)  # [B, C, T]
        return self.proj(self.pooled(x)), self.seq_proj(x.transpose(1, 2))


def mean_max(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T] -> [B, 2C]: mean and max over the last axis."""
    return torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1)


class AudioCNN(SequenceEncoder):
    """audio [B, S] float32 PCM -> embedding [B, D]. Log-mel is computed inside (part of the export).

    Tokens of ``forward_with_sequence``: [B, T', sequence_dim] = the time axis after the conv blocks
    and frequency averaging, linearly projected (needs ``sequence_dim > 0``).
    """

    def __init__(
        self,
        frontend: LogMel,
        channels: tuple[int, ...],
        embed_dim: int,
        spec_augment: SpecAugment | None = None,
        sequence_dim: int = 0,
    ):
        super().__init__()
        self.frontend = frontend
        blocks, c = [], 1
        for width in channels:
            blocks.append(conv_block(c, width))
            c = width
        self.blocks = nn.Sequential(*blocks)
        self.proj = nn.Linear(2 * c, embed_dim)
        # optional parts (absent by default: same parameters and same forward as before)
        self.spec_augment = spec_augment
        self.seq_proj = nn.Linear(c, sequence_dim) if sequence_dim > 0 else None

    def spectrogram(self, audio: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel [B, 1, n_mels, T], SpecAugment-ed in training mode when enabled."""
        x = self.frontend(audio)
        if self.spec_augment is not None:
            x = self.spec_augment(x)
        return x

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.spectrogram(audio))  # [B, C, n_mels / 2^k, T / 2^k]
        return x.mean(dim=2)  # [B, C, T']  average over frequency

    pooled = staticmethod(mean_max)  # [B, 2C]  mean + max over time


class VideoCNN(SequenceEncoder):
    """frames [B, F, H, W, 3] uint8 RGB -> embedding [B, D].

    A per-frame CNN on 56x56 (2x average-pooled) crops, a temporal 1-D conv over frame embeddings,
    then temporal pooling: mean + max (default), mean, or attention (``TemporalPool``).
    Tokens of ``forward_with_sequence``: per-frame features after the temporal conv, projected: [B, F, sequence_dim].
    """

    rgb_mean: torch.Tensor  # buffers (register_buffer)
    rgb_std: torch.Tensor

    def __init__(self, channels: tuple[int, ...], embed_dim: int, pooling: str = "meanmax", sequence_dim: int = 0):
        super().__init__()
        if pooling not in VIDEO_POOLINGS:
            raise ValueError(f"video pooling must be one of {VIDEO_POOLINGS}, got {pooling!r}")
        blocks, c = [], 3
        for i, width in enumerate(channels):
            last = i == len(channels) - 1
            blocks.append(conv_block(c, width, stride=2 if i == 0 else 1, pool=not last))
            c = width
        self.blocks = nn.Sequential(*blocks)
        self.temporal = nn.Sequential(nn.Conv1d(c, c, 3, padding=1), nn.ReLU(inplace=True))
        self.proj = nn.Linear(2 * c if pooling == "meanmax" else c, embed_dim)
        self.register_buffer("rgb_mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1), persistent=False)
        # optional parts (absent by default)
        self.pool = TemporalPool(c, pooling) if pooling != "meanmax" else None
        self.seq_proj = nn.Linear(c, sequence_dim) if sequence_dim > 0 else None

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, F, H, W, 3] uint8 -> [B, C, F] frame features after the residual temporal conv."""
        b, f, h, w, _ = frames.shape
        x = frames.reshape(b * f, h, w, 3).permute(0, 3, 1, 2).float() / 255.0  # [B*F, 3, H, W]
        x = (nn.functional.avg_pool2d(x, 2) - self.rgb_mean) / self.rgb_std  # [B*F, 3, H/2, W/2]
        x = self.blocks(x).mean(dim=(2, 3))  # [B*F, C]
        x = x.reshape(b, f, -1).transpose(1, 2)  # [B, C, F]
        return x + self.temporal(x)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return mean_max(x) if self.pool is None else self.pool(x)  # [B, 2C] or [B, C]


# ---------------------------------------------------------------- ResNet18 encoders
def resnet18_trunk(in_channels: int = 3) -> nn.Module:
    """torchvision ResNet18 (random init, ``weights=None``) with ``fc`` removed (Identity).

    ``in_channels != 3`` replaces ``conv1`` by a 7x7 / stride-2 stem with that many input channels
    (same geometry and init as torchvision's). Imported lazily: the light models never need torchvision.
    """
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.fc = nn.Identity()
    return net


def resnet_feature_map(net: ResNet, x: torch.Tensor) -> torch.Tensor:
    """ResNet trunk without the global pooling: [N, C_in, H, W] -> [N, 512, H/32, W/32]."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


class AudioResNet(SequenceEncoder):
    """audio [B, S] -> embedding [B, D]: ResNet18 on the normalised log-mel as a 1-channel image.

    Global average pooling (as torchvision's) -> Linear(512, D). Tokens for ``forward_with_sequence``:
    the final feature map averaged over frequency, [B, T/32, 512], projected to ``sequence_dim``.
    """

    def __init__(
        self, frontend: LogMel, embed_dim: int, spec_augment: SpecAugment | None = None, sequence_dim: int = 0
    ):
        super().__init__()
        self.frontend = frontend
        self.net = resnet18_trunk(1)
        self.proj = nn.Linear(512, embed_dim)
        self.spec_augment = spec_augment
        self.seq_proj = nn.Linear(512, sequence_dim) if sequence_dim > 0 else None

    spectrogram = AudioCNN.spectrogram  # reads frontend / spec_augment, which this class has too

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        spec = self.spectrogram(audio)  # type: ignore[misc]  # AudioCNN's method, see above
        return resnet_feature_map(self.net, spec).mean(dim=2)  # [B, 512, T']

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=2)  # [B, 512]


class VideoResNet(SequenceEncoder):
    """frames [B, F, H, W, 3] uint8 -> embedding [B, D]: torchvision ResNet18 per frame (full
    resolution, ImageNet normalisation), global average pooling -> 512 per frame, then temporal
    pooling (``TemporalPool``: meanmax / mean / attention) and Linear(->D).
    Tokens for ``forward_with_sequence``: per-frame 512-d features projected, [B, F, sequence_dim].
    """

    rgb_mean: torch.Tensor  # buffers (register_buffer)
    rgb_std: torch.Tensor

    def __init__(self, embed_dim: int, pooling: str = "meanmax", sequence_dim: int = 0):
        super().__init__()
        self.net = resnet18_trunk(3)
        self.pool = TemporalPool(512, pooling)
        self.proj = nn.Linear(self.pool.out_dim, embed_dim)
        self.seq_proj = nn.Linear(512, sequence_dim) if sequence_dim > 0 else None
        self.register_buffer("rgb_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, F, H, W, 3] uint8 -> [B, 512, F]."""
        b, f, h, w, _ = frames.shape
        x = frames.reshape(b * f, h, w, 3).permute(0, 3, 1, 2).float() / 255.0
        x = resnet_feature_map(self.net, (x - self.rgb_mean) / self.rgb_std).mean(dim=(2, 3))  # [B*F, 512]
        return x.reshape(b, f, -1).transpose(1, 2)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)


# ---------------------------------------------------------------- variational embedding head
class VariationalHead(nn.Module):
    """Embedding [B, D] -> (z, mu, logvar), each [B, D].

    h = LayerNorm(MLP(x) + R x), MLP = Linear-GELU-Linear, R a linear residual projection;
    mu = Linear(h), logvar = clamp(Linear(h), -10, 10) with the logvar layer zero-initialised
    (sigma = 1 at the start). Training: z = mu + eps * exp(logvar / 2), eps ~ N(0, I)
    (reparameterisation); eval: z = mu (deterministic, and the only branch in an export).
    """

    LOGVAR_MIN, LOGVAR_MAX = -10.0, 10.0

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.residual = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.mu = nn.Linear(dim, dim)
        self.logvar = nn.Linear(dim, dim)
        nn.init.zeros_(self.logvar.weight)
        nn.init.zeros_(self.logvar.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.norm(self.mlp(x) + self.residual(x))
        mu = self.mu(h)
        logvar = torch.clamp(self.logvar(h), self.LOGVAR_MIN, self.LOGVAR_MAX)
        if self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        else:
            z = mu
        return z, mu, logvar
