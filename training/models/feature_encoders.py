"""Encoders of pre-extracted feature sequences (text, audio and video features of MOSI / MOSEI / SIMS).

Each maps features x [B, L, D_in] (zero padded after each sample's length) and lengths [B] (valid steps,
>= 1) to an embedding [B, E]; ``forward_with_sequence`` also returns per-step tokens [B, L, E] (zero on
padding) for the fusions that attend over time (``xattn``). Padding never reaches the result: a sample
gives the same embedding whatever is written after its length.

  mlp          the masked mean over the valid steps, then the residual MLP of the AttentionRobustV4 plan
               (dropout on the input, Linear-LayerNorm-GELU twice, plus a linear residual projection)
  lstm         one LSTM layer over the sequence; the output at the last valid step (a unidirectional LSTM's
               output there equals the packed sequence's final state, and needs no packing: export-friendly),
               then Linear (as MMSA's SubNet / TextSubNet read the final hidden state)
  transformer  Linear to E, learned positions, ``transformer_layers`` encoder layers with the padding masked,
               masked mean

Seed 003's variational encoders are these plus ``VariationalHead`` (``ModelConfig.variational``, or an
uncertainty fusion): mu / logvar clamped to [-10, 10], reparameterised only while training.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def valid_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """lengths [B] -> [B, L] bool, True on the valid steps."""
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean_steps(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean of x [B, L, D] over each sample's valid steps -> [B, D]."""
    valid = valid_mask(lengths, x.shape[1]).to(x.dtype)[:, :, None]  # [B, L, 1]
    return (x * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1.0)


class ResidualMLP(nn.Module):
    """x [..., D_in] -> [..., E]: drop(x); h = GELU(LN(W1 x)); out = GELU(LN(W2 h)) + R x."""

    def __init__(self, dim_in: int, dim_out: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc1, self.ln1 = nn.Linear(dim_in, dim_out), nn.LayerNorm(dim_out)
        self.fc2, self.ln2 = nn.Linear(dim_out, dim_out), nn.LayerNorm(dim_out)
        self.residual = nn.Linear(dim_in, dim_out) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(x)
        h = F.gelu(self.ln1(self.fc1(x)))
        return F.gelu(self.ln2(self.fc2(h))) + self.residual(x)


class FeatureEncoder(nn.Module):
    """Shared interface: ``forward(x, lengths)`` -> [B, E]; ``forward_with_sequence`` -> ([B, E], [B, L, E])."""

    def forward_with_sequence(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokens(x, lengths) * valid_mask(lengths, x.shape[1]).to(x.dtype)[:, :, None]
        return self(x, lengths), tokens

    def tokens(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class MLPFeatureEncoder(FeatureEncoder):
    """Masked mean over time, then ``ResidualMLP``; tokens = a linear map of each step (for ``xattn``)."""

    def __init__(self, dim_in: int, embed_dim: int, dropout: float, sequence_dim: int = 0):
        super().__init__()
        self.mlp = ResidualMLP(dim_in, embed_dim, dropout)
        self.token_proj = nn.Linear(dim_in, sequence_dim) if sequence_dim else None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.mlp(masked_mean_steps(x, lengths))  # [B, E]

    def tokens(self, x, lengths):
        assert self.token_proj is not None  # built with sequence_dim
        return self.token_proj(x)  # [B, L, E]


class LSTMFeatureEncoder(FeatureEncoder):
    """LSTM over the steps; the output at step length - 1 -> dropout -> Linear."""

    def __init__(self, dim_in: int, embed_dim: int, dropout: float, sequence_dim: int = 0):
        super().__init__()
        self.lstm = nn.LSTM(dim_in, embed_dim, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.token_proj = nn.Linear(embed_dim, sequence_dim) if sequence_dim else None

    def _run(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, _ = self.lstm(x)  # [B, L, E]
        last = (lengths.long() - 1).clamp(0, x.shape[1] - 1)  # [B]
        final = out[torch.arange(x.shape[0], device=x.device), last]  # [B, E]
        return self.proj(self.drop(final)), out

    def forward(self, x, lengths):
        return self._run(x, lengths)[0]

    def forward_with_sequence(self, x, lengths):
        e, out = self._run(x, lengths)
        assert self.token_proj is not None  # built with sequence_dim
        return e, self.token_proj(out) * valid_mask(lengths, x.shape[1]).to(x.dtype)[:, :, None]


class TransformerFeatureEncoder(FeatureEncoder):
    """Linear to E + learned positions, Transformer encoder layers with the padding masked, masked mean."""

    def __init__(
        self, dim_in: int, embed_dim: int, dropout: float, max_len: int, layers: int, heads: int, sequence_dim: int = 0
    ):
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"transformer encoder: embed_dim {embed_dim} must be divisible by {heads} heads")
        self.inp = nn.Linear(dim_in, embed_dim)
        self.pos = nn.Parameter(torch.zeros(1, max_len, embed_dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(
            embed_dim, heads, 2 * embed_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.token_proj = nn.Linear(embed_dim, sequence_dim) if sequence_dim else None

    def _run(self, x, lengths):
        if x.shape[1] > self.pos.shape[1]:
            raise ValueError(f"sequence of {x.shape[1]} steps is longer than the {self.pos.shape[1]} trained for")
        h = self.inp(x) + self.pos[:, : x.shape[1]]
        h = self.encoder(h, src_key_padding_mask=~valid_mask(lengths, x.shape[1]))  # [B, L, E]
        return masked_mean_steps(h, lengths), h

    def forward(self, x, lengths):
        return self._run(x, lengths)[0]

    def forward_with_sequence(self, x, lengths):
        e, h = self._run(x, lengths)
        assert self.token_proj is not None  # built with sequence_dim
        return e, self.token_proj(h) * valid_mask(lengths, x.shape[1]).to(x.dtype)[:, :, None]


def build_feature_encoder(kind: str, dim_in: int, embed_dim: int, cfg, max_len: int, sequence_dim: int = 0):
    """One modality's encoder by name (``ModelConfig.feature_encoder``)."""
    if kind == "mlp":
        return MLPFeatureEncoder(dim_in, embed_dim, cfg.feature_dropout, sequence_dim)
    if kind == "lstm":
        return LSTMFeatureEncoder(dim_in, embed_dim, cfg.feature_dropout, sequence_dim)
    if kind == "transformer":
        return TransformerFeatureEncoder(
            dim_in, embed_dim, cfg.feature_dropout, max_len, cfg.transformer_layers, cfg.transformer_heads, sequence_dim
        )
    raise ValueError(f"unknown feature encoder {kind!r}; expected mlp, lstm or transformer")
