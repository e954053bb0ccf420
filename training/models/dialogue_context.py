"""Dialogue context: a Transformer over the utterances of each conversation.

A conversation is a padded batch of dialogues: x [B, U, D] (utterance u of dialogue b), the speaker of
each utterance speakers [B, U] (an index inside its dialogue: IEMOCAP 0 = M, 1 = F; MELD the one-hot's
position) and utterances [B, U] (True on real utterances, False on padding). ``DialogueContext`` adds a
speaker embedding and runs ``layers`` Transformer layers whose attention also knows whether two utterances
have the same speaker and how far apart they are (``SpeakerAttention``), with the padding masked (and,
``past_only``, every later utterance: what a live conversation allows, where the next utterance has not
been spoken yet); it returns x plus a projection of the result, [B, U, D], zero-initialised, so an
untrained context starts as the identity, and padding never changes a real utterance's answer.

``DialogueModel`` puts this context under any fusion: every modality's utterance embedding is
contextualised over its dialogue before the fusion sees it (one context per modality), so the nine
fusions of the clip model work on conversations unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from avemo.training.models.fusion import modality_dropout


class SpeakerAttention(nn.Module):
    """One pre-norm Transformer layer over a dialogue whose attention knows who spoke:
    score(u, u') = q_u . k_u' / sqrt(d) + s_h [speaker(u) == speaker(u')] - softplus(r_h) |u - u'| per head h,
    with -inf where u' is padding (or, past only, later than u). s_h starts at 2 (a speaker's own utterances
    count most: emotions persist per speaker) and the distance decay at softplus(-3) = 0.05 per utterance;
    both are learned."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dialogue context: {dim} features do not split into {heads} heads")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.same_speaker = nn.Parameter(torch.full((heads,), 2.0))
        self.decay = nn.Parameter(torch.full((heads,), -3.0))
        self.drop = nn.Dropout(dropout)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, same: torch.Tensor, allowed: torch.Tensor, distance: torch.Tensor):
        """x [B, U, D]; same, allowed [B, U, U] bool; distance [U, U] float -> [B, U, D]."""
        b, u, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, u, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)  # [B, H, U, U]
        scores = scores + same[:, None].to(x.dtype) * self.same_speaker[None, :, None, None]
        scores = scores - nn.functional.softplus(self.decay)[None, :, None, None] * distance
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        attended = self.drop(torch.softmax(scores, dim=-1)) @ v  # [B, H, U, D / H]
        x = x + self.drop(self.proj(attended.transpose(1, 2).reshape(b, u, d)))
        return x + self.drop(self.ff(self.norm2(x)))


class DialogueContext(nn.Module):
    """x [B, U, D], speakers [B, U] int64, utterances [B, U] bool -> [B, U, D]: x + a projection of
    ``layers`` ``SpeakerAttention`` layers over x + a speaker embedding; rows of padding are returned as zeros."""

    def __init__(
        self,
        dim: int,
        num_speakers: int,
        layers: int = 1,
        heads: int = 4,
        dropout: float = 0.1,
        past_only: bool = False,
    ):
        super().__init__()
        self.past_only = past_only
        self.speaker = nn.Embedding(max(num_speakers, 1), dim)
        nn.init.normal_(self.speaker.weight, std=0.02)
        self.layers = nn.ModuleList(SpeakerAttention(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)  # starts as the identity: context is learned, never imposed
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, speakers: torch.Tensor, utterances: torch.Tensor) -> torch.Tensor:
        steps = x.shape[1]
        spk = speakers.clamp(0, self.speaker.num_embeddings - 1)
        index = torch.arange(steps, device=x.device)
        distance = (index[:, None] - index[None, :]).abs().to(x.dtype)  # [U, U]
        same = spk[:, :, None] == spk[:, None, :]  # [B, U, U]
        allowed = utterances[:, None, :].expand(-1, steps, -1)  # [B, U, U]: keys that are real utterances
        if self.past_only:  # utterance u may not look at a later u'
            allowed = allowed & (index[None, :] <= index[:, None])[None]
        allowed = allowed | torch.eye(steps, dtype=torch.bool, device=x.device)[None]  # padding rows see themselves
        h = x + self.speaker(spk)  # [B, U, D]
        for layer in self.layers:
            h = layer(h, same, allowed, distance)
        return (x + self.out(self.norm(h))) * utterances[:, :, None].to(x.dtype)


def flatten_utterances(x: torch.Tensor, utterances: torch.Tensor | None) -> torch.Tensor:
    """[B, U, ...] -> [N, ...]: the real utterances in row-major order (dialogue 0's first). ``utterances``
    None: every utterance is real (N = B U; a plain reshape, which export traces with U dynamic)."""
    return x.reshape(-1, *x.shape[2:]) if utterances is None else x[utterances]


def scatter_utterances(rows: torch.Tensor, utterances: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """[N, D] rows of ``flatten_utterances`` -> [B, U, D] (the B, U of ``like``), zeros on padding."""
    if utterances is None:
        return rows.reshape(like.shape[0], like.shape[1], rows.shape[-1])
    out = rows.new_zeros(*utterances.shape, rows.shape[-1])
    out[utterances] = rows
    return out


class DialogueModel(nn.Module):
    """An utterance-level ``FusionModel`` (``utterance_model``) over every utterance of a dialogue, with each modality's
    embedding contextualised by a ``DialogueContext`` (``contexts`` keyed by modality; empty = the
    utterance-only baseline).

    Call: ``model(x_1, ..., x_M, mask [B, U, M], speakers [B, U] int64, utterances [B, U] bool)`` with x_m
    [B, U, D_m] (one feature vector per utterance). Every output has one row per real utterance, N =
    utterances.sum(), in row-major order (the order of the batch's flattened labels): logits [N, C],
    modality_weights [N, M], <m>_logits and the fusion's extras, exactly as ``FusionModel`` names them.
    """

    dialogue = True
    utterance_model: Any  # a FusionModel (model.py, which imports this module)

    def __init__(self, utterance_model: nn.Module, contexts: dict[str, nn.Module] | None = None):
        super().__init__()
        self.utterance_model = utterance_model
        self.contexts = nn.ModuleDict(contexts or {})
        self.modalities: tuple[str, ...] = self.utterance_model.modalities
        self.input_names: tuple[str, ...] = self.utterance_model.input_names
        self.task: str = self.utterance_model.task

    def _split(self, args: tuple) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor, torch.Tensor]:
        n = len(self.modalities)
        if len(args) != n + 3:
            raise TypeError(f"expected {n} inputs ({', '.join(self.input_names)}), mask, speakers and utterances")
        return args[:n], args[n], args[n + 1], args[n + 2]

    def _run(self, inputs, mask, speakers, utterances, keep: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``utterances`` None: every utterance of every dialogue is real (what an exported model serves:
        one whole dialogue per request)."""
        um = self.utterance_model
        rows = [flatten_utterances(x, utterances)[:, None, :] for x in inputs]  # [N, 1, D_m]: one step each
        m = flatten_utterances(mask, utterances)  # [N, M]
        if keep is not None:
            m = m * keep
        if self.training and um.modality_dropout > 0 and len(um.encoders) >= 2:
            m = modality_dropout(m, um.modality_dropout)
        lengths = torch.ones_like(m, dtype=torch.int64)  # [N, M]
        hs, ctx, extra = um._encode(rows, m, lengths)
        real = torch.ones_like(speakers, dtype=torch.bool) if utterances is None else utterances  # [B, U]
        for i, name in enumerate(self.modalities):
            if hs[i] is not None and name in self.contexts:
                grid = scatter_utterances(hs[i], utterances, speakers)  # [B, U, E]
                hs[i] = flatten_utterances(self.contexts[name](grid, speakers, real), utterances) * m[:, i : i + 1]
        return um._fuse(hs, ctx, extra, m)

    def forward(self, *args: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._run(*self._split(args))

    @torch.no_grad()
    def forward_dropping(self, *args: torch.Tensor, keeps: list[tuple[float, ...]]) -> list[dict[str, torch.Tensor]]:
        """One output dict per ``keeps`` row (a keep value per modality): ``forward`` with the dropped
        modalities' mask entries 0 (their embeddings, and so their context, are zeroed by the mask)."""
        inputs, mask, speakers, utterances = self._split(args)
        return [self._run(inputs, mask, speakers, utterances, mask.new_tensor(k)) for k in keeps]


class NoContext(nn.Module):
    """The context interface without context: x [B, U, D] -> x (JOYFUL with ``--context none``)."""

    def forward(self, x: torch.Tensor, speakers: torch.Tensor, utterances: torch.Tensor) -> torch.Tensor:
        return x * utterances[:, :, None].to(x.dtype)


def make_context(cfg, dim: int) -> nn.Module:
    """``cfg.context`` (a ``ModelConfig``) as a module over [B, U, dim] (``NoContext`` for "none")."""
    if cfg.context == "none":
        return NoContext()
    heads = cfg.transformer_heads if dim % cfg.transformer_heads == 0 else 1
    return DialogueContext(dim, cfg.num_speakers, cfg.context_layers, heads, cfg.feature_dropout, cfg.context == "past")
