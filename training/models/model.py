"""FusionModel({modality: encoder}, fusion) and the builder that makes it from a config."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from avemo.contract.geometry import WindowGeometry
from avemo.contract.tensors import AUDIO, AUDIO_CLIP, FRAMES
from avemo.training.models.config import CLIP_MODALITIES, CONTEXTS, UNIMODAL_FUSIONS, ModelConfig
from avemo.training.models.dialogue_context import DialogueModel, make_context
from avemo.training.models.encoders import AudioCNN, AudioResNet, SpecAugment, VariationalHead, VideoCNN, VideoResNet
from avemo.training.models.feature_encoders import build_feature_encoder
from avemo.training.models.frontend import LogMel
from avemo.training.models.fusion import FUSION_BUILDERS, SEQUENCE_FUSIONS, VARIATIONAL_FUSIONS, modality_dropout
from avemo.training.models.joyful import JoyfulModel, build_joyful
from avemo.training.models.pretrained import SPEECH_ENCODERS, SPEECH_LAYERS, SpeechEncoder


def projection_head(dim_in: int, dim_out: int) -> nn.Sequential:
    """Linear-ReLU-Linear projection of an embedding for the contrastive loss."""
    return nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(inplace=True), nn.Linear(dim_in, dim_out))


class FusionModel(nn.Module):
    """Encoders keyed by modality, one fusion head over them:
    ``FusionModel({"audio": enc_a, "video": enc_v}, fusion, ...)`` (the clip model, M = 2) or
    ``FusionModel({"text": enc_t, "audio": enc_a, "video": enc_v}, fusion, ...)`` (a feature model, M = 3).

    Call: ``model(x_1, ..., x_M, modality_mask[, lengths])`` with one input per entry of ``modalities``
    (clips: audio [B, S] f32, frames [B, F, H, W, 3] u8; features: [B, L_m, D_m] f32), modality_mask [B, M]
    f32 and, for feature models, lengths [B, M] int64 (valid steps). ``input_names`` are the batch keys of the
    inputs (clips: "audio", "frames"; features: the modality names). Returns a dict of
    logits [B, C] (C = 1: the regression value), modality_weights [B, M] and, for fusion models,
    <m>_logits [B, C] per modality (auxiliary unimodal heads used by the losses and the error analysis).

    ``modalities`` lists the input modalities (the mask's columns); a unimodal baseline has an encoder for one
    of them only. Optional outputs (only when the corresponding option is on; the default model has none):
      mu_<m>, logvar_<m> [B, D]  ``variational`` (multiplied by the mask: a missing modality has zero KL)
      z_<m> [B, P]  ``contrastive_proj_dim`` = P > 0, two or more encoders
      whatever the fusion adds (hierarchical: recon*, target_*, gate; gated_uncertainty: gate).
    ``unimodal_fallback``: an example with exactly one modality present gets that modality's auxiliary
    logits as its ``logits`` (fusion models only).
    ``sequence``: the encoders return token sequences too (``forward_with_sequence``), passed to
    the fusion as ctx["seq_<m>"] (masked; ctx["pad_<m>"] marks padding of feature sequences).
    """

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        fusion: nn.Module,
        num_outputs: int,
        embed_dim: int,
        modalities: tuple[str, ...] | None = None,
        modality_dropout: float = 0.0,
        variational: bool = False,
        contrastive_proj_dim: int = 0,
        sequence: bool = False,
        unimodal_fallback: bool = False,
        input_names: tuple[str, ...] | None = None,
        task: str = "classification",
    ):
        super().__init__()
        self.task = task  # "classification" (logits over classes) or "regression" (one value)
        self.modalities = tuple(modalities or encoders)
        self.input_names = tuple(input_names or self.modalities)
        if set(encoders) - set(self.modalities):
            raise ValueError(f"encoders {sorted(encoders)} are not all among the modalities {self.modalities}")
        # in modality order, whatever the dict's order
        self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities if m in encoders})
        self.fusion = fusion
        self.norms = nn.ModuleDict({m: nn.LayerNorm(embed_dim) for m in self.encoders})
        multi = len(self.encoders) >= 2
        self.aux = nn.ModuleDict({m: nn.Linear(embed_dim, num_outputs) for m in self.encoders} if multi else {})
        self.modality_dropout = modality_dropout
        self.unimodal_fallback = unimodal_fallback and multi
        # optional parts, created after the original ones (same init order for the default model)
        self.sequence = sequence
        self.variational = nn.ModuleDict({m: VariationalHead(embed_dim) for m in self.encoders} if variational else {})
        proj = contrastive_proj_dim > 0 and multi
        self.proj = nn.ModuleDict(
            {m: projection_head(embed_dim, contrastive_proj_dim) for m in self.encoders} if proj else {}
        )

    def _embed(self, name: str, x: torch.Tensor, m: torch.Tensor, lengths, ctx: dict, out: dict) -> torch.Tensor:
        """One modality: encoder -> LayerNorm (-> variational head) -> times its mask column m [B, 1]."""
        encoder: Any = self.encoders[name]  # one of encoders.py's, feature_encoders.py's or a SpeechEncoder
        args = (x,) if lengths is None else (x, lengths)
        if self.sequence:
            e, tokens = encoder.forward_with_sequence(*args)
            ctx[f"seq_{name}"] = tokens * m[:, :, None]
            if lengths is not None:
                ctx[f"pad_{name}"] = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
        else:
            e = encoder(*args)
        h = self.norms[name](e)
        if name in self.variational:
            h, mu, logvar = self.variational[name](h)
            out[f"mu_{name}"], out[f"logvar_{name}"] = mu * m, logvar * m
            ctx[f"logvar_{name}"] = out[f"logvar_{name}"]
        return h * m  # [B, D]

    def _split(self, args: tuple) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor | None]:
        """(x_1, ..., x_M, mask[, lengths]) -> (inputs, mask, lengths or None)."""
        n = len(self.modalities)
        if len(args) not in (n + 1, n + 2):
            raise TypeError(f"expected {n} inputs ({', '.join(self.input_names)}), the mask and optionally lengths")
        return args[:n], args[n], args[n + 1] if len(args) > n + 1 else None

    def forward(self, *args: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs, mask, lengths = self._split(args)
        if self.training and self.modality_dropout > 0 and len(self.encoders) >= 2:
            mask = modality_dropout(mask, self.modality_dropout)
        return self._fuse(*self._encode(inputs, mask, lengths), mask)

    def _encode(
        self, inputs, mask: torch.Tensor, lengths
    ) -> tuple[list[torch.Tensor | None], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Masked embeddings [B, D] per modality (None without an encoder), fusion ctx, extra outputs."""
        hs: list[torch.Tensor | None] = []
        ctx: dict[str, torch.Tensor] = {}
        extra: dict[str, torch.Tensor] = {}
        for i, (name, x) in enumerate(zip(self.modalities, inputs)):
            if name not in self.encoders:
                hs.append(None)
                continue
            lens = None if lengths is None else lengths[:, i]
            hs.append(self._embed(name, x, mask[:, i : i + 1], lens, ctx, extra))
        return hs, ctx, extra

    def _fuse(self, hs, ctx: dict, extra: dict, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        result = self.fusion(hs, mask, ctx)
        out = {"logits": result[0], "modality_weights": result[1]}
        if len(self.aux):
            for name, h in zip(self.modalities, hs):
                out[f"{name}_logits"] = self.aux[name](h)
            if self.training:  # what each example really had (after modality dropout), for the auxiliary losses
                out["modality_present"] = mask  # [B, M]
            if self.unimodal_fallback:  # one modality left: that example is answered by the modality's own head
                alone = []  # [B, 1] each: 1 where modality i is the only one present
                for i in range(mask.shape[1]):
                    a = mask[:, i : i + 1]
                    for j in range(mask.shape[1]):
                        if j != i:
                            a = a * (1.0 - mask[:, j : j + 1])
                    alone.append(a)
                fused_share = 1.0 - alone[0]
                for a in alone[1:]:
                    fused_share = fused_share - a
                logits = fused_share * out["logits"]
                for name, a in zip(self.modalities, alone):
                    logits = logits + a * out[f"{name}_logits"]
                out["logits"] = logits
        for name, proj in self.proj.items():
            out[f"z_{name}"] = proj(hs[self.modalities.index(name)])
        out.update(extra)
        if len(result) > 2:
            out.update(result[2])
        return out

    @torch.no_grad()
    def forward_dropping(self, *args: torch.Tensor, keeps: list[tuple[float, ...]]) -> list[dict[str, torch.Tensor]]:
        """Evaluation outputs under several masks at the cost of one encoder pass: one output dict per
        ``keeps`` entry (one keep value per modality), each equal to ``forward`` with the dropped modality's
        input zeroed and its mask entry 0 (everything an encoder gives is multiplied by its mask)."""
        inputs, modality_mask, lengths = self._split(args)
        hs, ctx, extra = self._encode(inputs, modality_mask, lengths)
        outs = []
        for keeps_row in keeps:
            keep = modality_mask.new_tensor(keeps_row)  # [M]
            mask = modality_mask * keep
            k = dict(zip(self.modalities, keep))
            ctx_k = {n: t if n.startswith("pad_") else t * k[n.split("_", 1)[1]] for n, t in ctx.items()}
            extra_k = {n: t * k[n.split("_", 1)[1]] for n, t in extra.items()}
            hs_k = [None if h is None else h * keep[i] for i, h in enumerate(hs)]
            outs.append(self._fuse(hs_k, ctx_k, extra_k, mask))
        return outs


def model_inputs(model: FusionModel, batch: dict, data_modalities: tuple[str, ...] | None = None) -> tuple:
    """The positional arguments of ``model`` from a batch dict: its inputs by ``input_names``, the mask and
    (feature batches) the lengths, or (dialogue models) the speakers and utterances. ``data_modalities``: the
    batch's mask columns when they are not the model's own (a unimodal teacher reading a tri-modal batch): the
    model's columns are picked from them."""
    mask, lengths = batch["mask"], batch.get("lengths")
    if data_modalities is not None and tuple(data_modalities) != model.modalities:
        cols = [data_modalities.index(m) for m in model.modalities]
        mask = mask[..., cols]
        lengths = None if lengths is None else lengths[..., cols]
    args = [batch[name] for name in model.input_names] + [mask]
    if getattr(model, "dialogue", False):  # a dialogue batch: speakers [B, U] and the real utterances [B, U]
        return (*args, batch["speakers"], batch["utterances"])
    return tuple(args if lengths is None else args + [lengths])


def build_model(cfg: ModelConfig, geometry: WindowGeometry) -> FusionModel:
    """The builder: encoders by what the fusion needs, fusion from ``FUSION_BUILDERS``.

    Clip models (``cfg.input_dims`` empty): ``cfg.audio_encoder`` / ``cfg.video_encoder`` (light CNNs by default),
    built with random weights: pretrained weights go in at the start of training (``pretrained.load_pretrained``),
    and a checkpoint holds them all.
    Feature models: one ``cfg.feature_encoder`` per modality over its ``cfg.input_dims`` features.
    Dialogue models (``cfg.num_speakers`` > 0): ``dialogue_context.build_dialogue_model``.
    Token projections only for the fusions in ``SEQUENCE_FUSIONS``; variational heads when
    ``cfg.variational`` or the fusion needs them (``VARIATIONAL_FUSIONS``). Construction order (encoders in
    modality order, fusion, model) is fixed: the same seed gives the same weights.
    """
    if cfg.is_dialogue_model:  # a model with FusionModel's interface (modalities, input_names, task, calls)
        return build_dialogue_model(cfg, geometry)  # type: ignore[return-value]
    if cfg.fusion not in FUSION_BUILDERS:
        raise ValueError(f"unknown fusion {cfg.fusion!r}; expected one of {sorted(FUSION_BUILDERS)}")
    if cfg.fusion in UNIMODAL_FUSIONS and cfg.fusion not in cfg.modalities:
        raise ValueError(f"the {cfg.fusion}-only baseline needs {cfg.fusion} among the modalities {cfg.modalities}")
    if cfg.fusion not in UNIMODAL_FUSIONS and len(cfg.modalities) < 2:
        raise ValueError(f"fusion {cfg.fusion!r} needs two or more modalities, got {cfg.modalities}")
    seq_dim = cfg.embed_dim if cfg.fusion in SEQUENCE_FUSIONS else 0
    used = (cfg.fusion,) if cfg.fusion in UNIMODAL_FUSIONS else cfg.modalities
    encoders: dict[str, nn.Module] = {}
    if cfg.is_feature_model:
        for m in used:
            encoders[m] = build_feature_encoder(
                cfg.feature_encoder, int(cfg.input_dims[m]), cfg.embed_dim, cfg, int(cfg.seq_lens.get(m, 512)), seq_dim
            )
        input_names = cfg.modalities
    else:
        if tuple(cfg.modalities) != CLIP_MODALITIES:
            raise ValueError(f"a clip model reads {CLIP_MODALITIES}, got modalities {cfg.modalities}")
        if "audio" in used:
            frontend = LogMel(
                geometry.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels, cfg.logmel_mean, cfg.logmel_std
            )
            spec = SpecAugment(cfg.spec_freq_mask, cfg.spec_time_mask, cfg.spec_num_masks) if cfg.spec_augment else None
            if cfg.audio_encoder in SPEECH_ENCODERS:
                layers = cfg.audio_layers or SPEECH_LAYERS
                encoders["audio"] = SpeechEncoder(cfg.audio_encoder, layers, cfg.embed_dim, seq_dim)
            elif cfg.audio_encoder == "resnet18":
                encoders["audio"] = AudioResNet(frontend, cfg.embed_dim, spec, seq_dim)
            else:
                encoders["audio"] = AudioCNN(frontend, cfg.audio_channels, cfg.embed_dim, spec, seq_dim)
        if "video" in used:
            if cfg.video_encoder == "resnet18":
                encoders["video"] = VideoResNet(cfg.embed_dim, cfg.video_pooling, seq_dim)
            else:
                encoders["video"] = VideoCNN(cfg.video_channels, cfg.embed_dim, cfg.video_pooling, seq_dim)
        input_names = (AUDIO, FRAMES)
    return FusionModel(
        encoders,
        FUSION_BUILDERS[cfg.fusion](cfg),
        cfg.num_outputs,
        cfg.embed_dim,
        modalities=cfg.modalities,
        modality_dropout=cfg.modality_dropout,
        variational=cfg.variational or cfg.fusion in VARIATIONAL_FUSIONS,
        contrastive_proj_dim=cfg.contrastive_proj_dim,
        sequence=seq_dim > 0,
        unimodal_fallback=cfg.unimodal_fallback,
        input_names=input_names,
        task=cfg.task,
    )


def build_dialogue_model(cfg: ModelConfig, geometry: WindowGeometry) -> DialogueModel | JoyfulModel:
    """A dialogue model from its config: ``JoyfulModel`` for ``--fusion joyful``, otherwise a
    ``DialogueModel`` over the utterance-level model of ``cfg.fusion`` with one context per modality
    (none for ``--context none``)."""
    if cfg.context not in CONTEXTS:
        raise ValueError(f"context must be one of {', '.join(CONTEXTS)} (got {cfg.context!r})")
    if cfg.fusion == "joyful":
        return build_joyful(cfg, make_context)
    utterance = build_model(replace(cfg, num_speakers=0), geometry)
    contexts = {} if cfg.context == "none" else {m: make_context(cfg, cfg.embed_dim) for m in utterance.encoders}
    return DialogueModel(utterance, contexts)


class ExportWrapper(nn.Module):
    """Export-only module with the serving contract's signature: -> (probs [B, C], modality_weights [B, 2]).

    Inputs are made safe first, in the graph, so that no backend (native onnxruntime or libtorch have no
    validation code of their own) can return a non-finite output: audio is PCM, clipped to
    [-AUDIO_CLIP, AUDIO_CLIP] (unclipped, a finite 1e19 sample overflows the log-mel's power into inf and the
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
