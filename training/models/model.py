"""FusionModel(audio_encoder, video_encoder, fusion) and the builder that makes it from a config."""

from __future__ import annotations

import torch
from torch import nn

from avemo.contract.geometry import WindowGeometry
from avemo.contract.tensors import AUDIO_CLIP
from avemo.training.models.config import ModelConfig
from avemo.training.models.encoders import AudioCNN, AudioResNet, SpecAugment, VariationalHead, VideoCNN, VideoResNet
from avemo.training.models.frontend import LogMel
from avemo.training.models.fusion import FUSION_BUILDERS, SEQUENCE_FUSIONS, VARIATIONAL_FUSIONS


def modality_dropout(mask: torch.Tensor, p: float) -> torch.Tensor:
    """Drop each present modality with probability p, never both: mask [B, 2] -> [B, 2]."""
    keep = (torch.rand_like(mask) >= p).float()
    both_dropped = (keep.sum(dim=1, keepdim=True) == 0).float()
    pick = nn.functional.one_hot(torch.randint(0, 2, (mask.shape[0],), device=mask.device), 2).float()
    keep = keep + both_dropped * pick
    dropped = mask * keep
    # a window that had only one modality keeps it
    return torch.where(dropped.sum(dim=1, keepdim=True) > 0, dropped, mask)


def projection_head(dim_in: int, dim_out: int) -> nn.Sequential:
    """Linear-ReLU-Linear projection of an embedding for the contrastive loss."""
    return nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(inplace=True), nn.Linear(dim_in, dim_out))


class FusionModel(nn.Module):
    """audio [B, S] f32, frames [B, F, H, W, 3] u8, modality_mask [B, 2] f32 -> dict of
    logits [B, C], modality_weights [B, 2] and, for fusion models, audio_logits / video_logits [B, C]
    (auxiliary unimodal heads used by the losses and the error analysis).

    Optional outputs (only when the corresponding option is on; the default model has none):
      mu_audio, logvar_audio, mu_video, logvar_video [B, D]  ``variational`` (multiplied by the mask:
        a missing modality has mu = logvar = 0, i.e. zero KL)
      z_audio, z_video [B, P]  ``contrastive_proj_dim`` = P > 0, both encoders present
      whatever the fusion adds (hierarchical: recon*, target_*, gate; gated_uncertainty: gate).
    ``unimodal_fallback``: a window with exactly one modality present gets that modality's auxiliary
    logits as its ``logits`` (fusion models only).
    ``sequence``: the encoders return token sequences too (``forward_with_sequence``), passed to
    the fusion as ctx["seq_audio"] / ctx["seq_video"] (masked).
    """

    def __init__(
        self,
        audio_encoder: nn.Module | None,
        video_encoder: nn.Module | None,
        fusion: nn.Module,
        num_classes: int,
        embed_dim: int,
        modality_dropout: float = 0.0,
        variational: bool = False,
        contrastive_proj_dim: int = 0,
        sequence: bool = False,
        unimodal_fallback: bool = False,
    ):
        super().__init__()
        self.audio_encoder, self.video_encoder, self.fusion = audio_encoder, video_encoder, fusion
        self.audio_norm = nn.LayerNorm(embed_dim) if audio_encoder is not None else None
        self.video_norm = nn.LayerNorm(embed_dim) if video_encoder is not None else None
        both = audio_encoder is not None and video_encoder is not None
        self.audio_aux = nn.Linear(embed_dim, num_classes) if both else None
        self.video_aux = nn.Linear(embed_dim, num_classes) if both else None
        self.modality_dropout = modality_dropout
        self.unimodal_fallback = unimodal_fallback and both
        # optional parts, created after the original ones (same init order for the default model)
        self.sequence = sequence
        self.audio_variational = VariationalHead(embed_dim) if variational and audio_encoder is not None else None
        self.video_variational = VariationalHead(embed_dim) if variational and video_encoder is not None else None
        proj = contrastive_proj_dim > 0 and both
        self.audio_proj = projection_head(embed_dim, contrastive_proj_dim) if proj else None
        self.video_proj = projection_head(embed_dim, contrastive_proj_dim) if proj else None

    def _embed(
        self,
        encoder: nn.Module,
        norm: nn.Module,
        variational: nn.Module | None,
        x: torch.Tensor,
        m: torch.Tensor,
        name: str,
        ctx: dict,
        out: dict,
    ) -> torch.Tensor:
        """One modality: encoder -> LayerNorm (-> variational head) -> times its mask column m [B, 1]."""
        if self.sequence:
            e, tokens = encoder.forward_with_sequence(x)
            ctx[f"seq_{name}"] = tokens * m[:, :, None]
        else:
            e = encoder(x)
        h = norm(e)
        if variational is not None:
            h, mu, logvar = variational(h)
            out[f"mu_{name}"], out[f"logvar_{name}"] = mu * m, logvar * m
            ctx[f"logvar_{name}"] = out[f"logvar_{name}"]
        return h * m  # [B, D]

    def forward(
        self, audio: torch.Tensor, frames: torch.Tensor, modality_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        mask = modality_mask
        if (
            self.training
            and self.modality_dropout > 0
            and self.audio_encoder is not None
            and self.video_encoder is not None
        ):
            mask = modality_dropout(mask, self.modality_dropout)
        return self._fuse(*self._encode(audio, frames, mask), mask)

    def _encode(self, audio: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor):
        """Masked embeddings h_a, h_v [B, D] (None for a missing encoder), fusion ctx, extra outputs."""
        h_a = h_v = None
        ctx: dict[str, torch.Tensor] = {}
        extra: dict[str, torch.Tensor] = {}
        if self.audio_encoder is not None:
            h_a = self._embed(
                self.audio_encoder, self.audio_norm, self.audio_variational, audio, mask[:, 0:1], "audio", ctx, extra
            )
        if self.video_encoder is not None:
            h_v = self._embed(
                self.video_encoder, self.video_norm, self.video_variational, frames, mask[:, 1:2], "video", ctx, extra
            )
        return h_a, h_v, ctx, extra

    def _fuse(self, h_a, h_v, ctx: dict, extra: dict, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        result = self.fusion(h_a, h_v, mask, ctx)
        out = {"logits": result[0], "modality_weights": result[1]}
        if self.audio_aux is not None:
            out["audio_logits"] = self.audio_aux(h_a)
            out["video_logits"] = self.video_aux(h_v)
            if self.training:  # what each window really had (after modality dropout), for the auxiliary losses
                out["modality_present"] = mask  # [B, 2]
            if self.unimodal_fallback:  # one modality missing: that window is answered by the other's own head
                m_a, m_v = mask[:, 0:1], mask[:, 1:2]  # [B, 1] each, 0 or 1
                only_a, only_v = m_a * (1.0 - m_v), m_v * (1.0 - m_a)
                fused = (1.0 - only_a - only_v) * out["logits"]
                out["logits"] = fused + only_a * out["audio_logits"] + only_v * out["video_logits"]
        if self.audio_proj is not None:
            out["z_audio"] = self.audio_proj(h_a)
            out["z_video"] = self.video_proj(h_v)
        out.update(extra)
        if len(result) > 2:
            out.update(result[2])
        return out

    @torch.no_grad()
    def forward_dropping(
        self, audio: torch.Tensor, frames: torch.Tensor, modality_mask: torch.Tensor, keeps: list[tuple[float, float]]
    ) -> list[dict[str, torch.Tensor]]:
        """Evaluation outputs under several masks at the cost of one encoder pass: one output dict per
        ``keeps`` entry (audio keep, video keep), each equal to ``forward`` with the dropped modality's
        input zeroed and its mask entry 0 (everything an encoder gives is multiplied by its mask)."""
        h_a, h_v, ctx, extra = self._encode(audio, frames, modality_mask)
        outs = []
        for keep_a, keep_v in keeps:
            keep = modality_mask.new_tensor([keep_a, keep_v])  # [2]
            mask = modality_mask * keep
            k = {"audio": keep[0], "video": keep[1]}
            ctx_k = {name: t * k[name.split("_")[-1]] for name, t in ctx.items()}
            extra_k = {name: t * k[name.split("_")[-1]] for name, t in extra.items()}
            outs.append(
                self._fuse(
                    None if h_a is None else h_a * keep[0],
                    None if h_v is None else h_v * keep[1],
                    ctx_k,
                    extra_k,
                    mask,
                )
            )
        return outs


def build_model(cfg: ModelConfig, geometry: WindowGeometry) -> FusionModel:
    """The builder: encoders by what the fusion needs, fusion from ``FUSION_BUILDERS``.

    Light CNNs unless ``use_resnet_audio`` / ``use_resnet_video``; token projections only for the
    fusions in ``SEQUENCE_FUSIONS``; variational heads when ``cfg.variational`` or the fusion
    needs them (``VARIATIONAL_FUSIONS``). Construction order (audio, video, fusion, model) is fixed:
    the same seed gives the same weights.
    """
    if cfg.fusion not in FUSION_BUILDERS:
        raise ValueError(f"unknown fusion {cfg.fusion!r}; expected one of {sorted(FUSION_BUILDERS)}")
    seq_dim = cfg.embed_dim if cfg.fusion in SEQUENCE_FUSIONS else 0
    audio_encoder = video_encoder = None
    if cfg.fusion != "video":
        frontend = LogMel(geometry.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels, cfg.logmel_mean, cfg.logmel_std)
        spec = SpecAugment(cfg.spec_freq_mask, cfg.spec_time_mask, cfg.spec_num_masks) if cfg.spec_augment else None
        if cfg.use_resnet_audio:
            audio_encoder = AudioResNet(frontend, cfg.embed_dim, spec, seq_dim)
        else:
            audio_encoder = AudioCNN(frontend, cfg.audio_channels, cfg.embed_dim, spec, seq_dim)
    if cfg.fusion != "audio":
        if cfg.use_resnet_video:
            video_encoder = VideoResNet(cfg.embed_dim, cfg.video_pooling, seq_dim)
        else:
            video_encoder = VideoCNN(cfg.video_channels, cfg.embed_dim, cfg.video_pooling, seq_dim)
    return FusionModel(
        audio_encoder,
        video_encoder,
        FUSION_BUILDERS[cfg.fusion](cfg),
        cfg.num_classes,
        cfg.embed_dim,
        cfg.modality_dropout,
        variational=cfg.variational or cfg.fusion in VARIATIONAL_FUSIONS,
        contrastive_proj_dim=cfg.contrastive_proj_dim,
        sequence=seq_dim > 0,
        unimodal_fallback=cfg.unimodal_fallback,
    )


class ExportWrapper(nn.Module):
    """Export-only module with the serving contract's signature: -> (probs [B, C], modality_weights [B, 2]).

    Inputs are made safe first, in the graph, so that no backend (native onnxruntime or libtorch have no
    validation code of their own) can return a non-finite output: audio is PCM, clipped to
    [-AUDIO_CLIP, AUDIO_CLIP] (a finite 1e19 sample used to overflow the log-mel's power into inf and the
    probabilities into NaN), non-finite values are zeroed, the mask is clipped to [0, 1]. The Python
    backend refuses such requests before they get here (INVALID_ARG); this is the last line for the others.

    Every contract input stays a graph input even for unimodal baselines: the unused one is read into a
    zero-valued term of shape [B, 1], row by row, so one request's values never reach another request's
    rows in a dynamic batch.
    """

    def __init__(self, model: FusionModel):
        super().__init__()
        self.model = model.eval()

    def forward(self, audio: torch.Tensor, frames: torch.Tensor, modality_mask: torch.Tensor):
        audio = torch.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0).clamp(-AUDIO_CLIP, AUDIO_CLIP)  # [B, S]
        mask = torch.nan_to_num(modality_mask, nan=0.0, posinf=0.0, neginf=0.0).clamp(0.0, 1.0)  # [B, 2]
        out = self.model(audio, frames, mask)
        probs = torch.softmax(out["logits"], dim=-1)  # [B, C]
        touch = audio[:, :1] * 0.0 + frames[:, :1, 0, 0, 0].float() * 0.0  # [B, 1]: keeps both inputs in the graph
        return probs + touch, out["modality_weights"]
