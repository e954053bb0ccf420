"""JOYFUL's AutoFusion (Li et al., EMNLP 2023): a global and a local (inter-modal) auto-encoding fusion of
per-utterance feature vectors, one row per utterance.

Global branch: the concatenation of the masked inputs c = [x_1 ; ... ; x_M] [N, sum D_m] is compressed to
z_g = ReLU(W_2 tanh(W_1 c)) [N, k] (Linear-Tanh-Linear-ReLU, JOYFUL's 512 then 100) and reconstructed as
D_g(z_g) = W_4 tanh(W_3 z_g) ~ c (Linear-Tanh-Linear).

Local branch: each modality is projected to a common size P (JOYFUL's 460), p_m = P_m x_m [N, P]; a learned
vector b [P] scores each modality, s_m = b . tanh(p_m) / sqrt(P), and the weights alpha = softmax over the
present modalities of s (``masked_softmax``) combine them, l = sum_m alpha_m p_m [N, P]; l is compressed to
z_l = ReLU(W_6 tanh(W_5 l)) [N, k]. Its reconstruction (a choice of this implementation, see below) is one
decoder D_l(z_l) = W_8 tanh(W_7 z_l) [N, sum D_m] split into M blocks, block m ~ the modality's own masked
input x_m. JOYFUL reconstructs l itself; the raw inputs are used here because their scale is fixed by the
data (a reconstruction of the learned projection could be made small by shrinking the projection) and
because each modality then has its own term ("recon_<m>", logged per modality by the trainer).

Output: "fused" = [z_g ; z_l] [N, 2 k] (dropout applied), "modality_weights" = alpha [N, M]. The losses
(``avemo.training.losses.total.loss_terms``) read "recon" / "recon_target" (global, [N, sum D_m]) and
"recon_<m>" / "target_<m>" (local, [N, D_m]): recon = L(global) + sum_m L(local, m), L = MSE or SmoothL1
(``use_smooth_l1``), the JOYFUL loss global + inter with the inter term split per modality.

Hierarchical variant (the loss guides' AutoFusion_Hierarchical): the projections p_m are level 1; a gate
w = gate_shares(W_g [p_1 ; ... ; p_M] + b_g) [N, M] (softmax over the present modalities, initialised
uniform) weighs them, and the global branch compresses the gated level-1 codes [w_1 p_1 ; ... ; w_M p_M]
[N, M P] instead of the raw concatenation (level 2); its reconstruction target is still the raw
concatenation c. Extra output "gate" = w, read by the gate regulariser (``gate_reg_weight``, 0.01).

Missing modalities (mask 0): the input is zeroed before anything reads it, the projection is zeroed, its
attention weight and gate share are exactly 0, and its reconstruction and target blocks are 0 (no error).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from avemo.training.models.fusion import gate_shares, init_gate, masked_softmax, weighted_concat


def encoder(dim_in: int, hidden: int, code_dim: int) -> nn.Sequential:
    """JOYFUL's compressor: Linear-Tanh-Linear-ReLU, [N, dim_in] -> [N, code_dim]."""
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.Tanh(), nn.Linear(hidden, code_dim), nn.ReLU())


def decoder(code_dim: int, hidden: int, dim_out: int) -> nn.Sequential:
    """JOYFUL's reconstructor: Linear-Tanh-Linear, [N, code_dim] -> [N, dim_out]."""
    return nn.Sequential(nn.Linear(code_dim, hidden), nn.Tanh(), nn.Linear(hidden, dim_out))


class AutoFusion(nn.Module):
    """Global + local auto-encoding fusion of M per-utterance feature vectors (see the module docstring).

    ``dims``: modality -> feature size, in the model's modality order (the order of ``xs`` and of the mask's
    columns). ``code_dim`` k: size of each branch's code (output 2 k); ``hidden``: the auto-encoders' hidden
    size; ``local_dim`` P: the common size of the local branch's projections; ``hierarchical``: the gated
    variant (extra output "gate"); ``dropout``: on the fused output.

    Call: ``fusion(xs, mask)`` with xs M tensors [N, D_m] and mask [N, M] float -> dict of
    "fused" [N, 2 k], "modality_weights" [N, M], "recon" / "recon_target" [N, sum D_m],
    "recon_<m>" / "target_<m>" [N, D_m] per modality and, hierarchical only, "gate" [N, M].
    Targets are detached.
    """

    def __init__(
        self,
        dims: dict[str, int],
        code_dim: int = 100,
        hidden: int = 512,
        local_dim: int = 460,
        hierarchical: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if len(dims) < 2:
            raise ValueError(f"AutoFusion needs two or more modalities, got {list(dims)}")
        self.modalities = tuple(dims)
        self.dims = tuple(int(d) for d in dims.values())
        self.code_dim, self.local_dim, self.hierarchical = code_dim, local_dim, hierarchical
        total, m = sum(self.dims), len(self.dims)
        # global branch (hierarchical: over the gated level-1 projections)
        self.enc_global = encoder(m * local_dim if hierarchical else total, hidden, code_dim)
        self.dec_global = decoder(code_dim, hidden, total)
        # local (inter-modal) branch
        self.project = nn.ModuleDict({name: nn.Linear(d, local_dim) for name, d in dims.items()})
        self.query = nn.Parameter(torch.zeros(local_dim))  # b: zeros = uniform attention at the start
        self.enc_local = encoder(local_dim, hidden, code_dim)
        self.dec_local = decoder(code_dim, hidden, total)
        if hierarchical:
            self.gate = nn.Linear(m * local_dim, m - 1)
            init_gate(self.gate, 1.0 / m)
        self.dropout = nn.Dropout(dropout)

    @property
    def out_dim(self) -> int:
        """Size of "fused": global code ++ local code."""
        return 2 * self.code_dim

    def _blocks(self, mask: torch.Tensor) -> torch.Tensor:
        """Mask [N, M] -> [N, sum D_m]: each modality's column repeated over its features."""
        return torch.cat([mask[:, i : i + 1].expand(-1, d) for i, d in enumerate(self.dims)], dim=1)

    def forward(self, xs: list[torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        if len(xs) != len(self.dims):
            raise ValueError(f"expected {len(self.dims)} inputs ({', '.join(self.modalities)}), got {len(xs)}")
        mask = mask.to(xs[0].dtype)
        xs = [x * mask[:, i : i + 1] for i, x in enumerate(xs)]  # M x [N, D_m], missing ones zeroed
        concat = torch.cat(xs, dim=1)  # [N, sum D_m]
        present = self._blocks(mask)  # [N, sum D_m]
        out: dict[str, torch.Tensor] = {}

        # local branch: projections, attention over the present modalities, compression
        ps = [self.project[n](x) * mask[:, i : i + 1] for i, (n, x) in enumerate(zip(self.modalities, xs))]  # [N, P]
        scores = torch.stack([torch.tanh(p) @ self.query for p in ps], dim=1) / math.sqrt(self.local_dim)  # [N, M]
        alpha = masked_softmax(scores, mask)  # [N, M]
        local = sum(alpha[:, i : i + 1] * p for i, p in enumerate(ps))  # [N, P]
        z_local = self.enc_local(local)  # [N, k]

        # global branch
        if self.hierarchical:
            w = gate_shares(self.gate(torch.cat(ps, dim=1)), mask)  # [N, M]
            z_global = self.enc_global(weighted_concat(ps, w))  # [N, k]
            out["gate"] = w
        else:
            z_global = self.enc_global(concat)  # [N, k]

        out["fused"] = self.dropout(torch.cat([z_global, z_local], dim=1))  # [N, 2 k]
        out["modality_weights"] = alpha
        out["recon"] = self.dec_global(z_global) * present  # [N, sum D_m]
        out["recon_target"] = concat.detach()
        recon_local = (self.dec_local(z_local) * present).split(self.dims, dim=1)  # M x [N, D_m]
        for name, r, x in zip(self.modalities, recon_local, xs):
            out[f"recon_{name}"] = r
            out[f"target_{name}"] = x.detach()
        return out
