"""JOYFUL's relational graph over the utterances of a dialogue, its augmentations and its contrastive loss.

Nodes: the real utterances of a batch of dialogues, N rows in row-major order (dialogue 0's utterances, then
dialogue 1's, ...). Edges: every utterance t receives a message from each utterance s of the same dialogue
with t - window_past <= s <= t + window_future (itself included); no edge ever crosses dialogues. With
``window_future = 0`` every edge comes from the past (s <= t): nothing said later reaches an utterance.

Edge conventions (PyG's): ``edge_index[0]`` = source s (the neighbour), ``edge_index[1]`` = target t (the
utterance updated), messages flow s -> t. Edges are listed target by target (t ascending), sources
ascending within a target.

Relation numbering (num_speakers S, 2 S^2 relations):
    relation = (speaker[s] * S + speaker[t]) * 2 + direction,
    direction = 0 when s <= t (the past, the self-loop included), 1 when s > t (the future).
IEMOCAP (S = 2) has 8 relations, MELD (S = 9) 162: ``num_bases`` keeps RGCN's weights at num_bases matrices.

``RelationalGraph`` is COGMEN / JOYFUL's RGCNConv -> TransformerConv. torch_geometric is an optional
dependency (``pip install -e '.[graph]'``): it is imported when a ``RelationalGraph`` is built, so this
module (edges, augmentations, loss) imports without it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

GRAPH_HINT = "the JOYFUL relational graph needs torch_geometric: pip install -e '.[graph]'"


def num_relations(num_speakers: int) -> int:
    """Relations of ``dialogue_edges``: (speaker of source, speaker of target, past / future)."""
    return 2 * num_speakers * num_speakers


def dialogue_edges(
    counts: torch.Tensor,
    speakers: torch.Tensor | list[int],
    window_past: int,
    window_future: int,
    num_speakers: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Window edges of a batch of dialogues (see the module docstring for the conventions).

    counts [B] int64: utterances per dialogue; speakers [N] (N = counts.sum()): each node's speaker id in
    [0, num_speakers). Returns edge_index [2, E] int64 (source, target) and edge_type [E] int64, on the
    speakers' device (the counts' when speakers is a list).
    """
    if window_past < 0 or window_future < 0:
        raise ValueError(f"windows must be >= 0, got past {window_past}, future {window_future}")
    device = speakers.device if isinstance(speakers, torch.Tensor) else torch.as_tensor(counts).device
    counts = torch.as_tensor(counts, dtype=torch.long, device=device)  # [B]
    speakers = torch.as_tensor(speakers, dtype=torch.long, device=device)  # [N]
    n = int(counts.sum())
    if speakers.numel() != n:
        raise ValueError(f"{speakers.numel()} speakers for {n} utterances (counts {counts.tolist()})")
    if n and (int(speakers.min()) < 0 or int(speakers.max()) >= num_speakers):
        raise ValueError(f"speaker ids must be in [0, {num_speakers}), got {speakers.min()}..{speakers.max()}")
    node = torch.arange(n, device=device)  # [N]
    dialogue = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)  # [N]
    start = torch.cumsum(counts, 0) - counts  # [B] first node of each dialogue
    pos, length = node - start[dialogue], counts[dialogue]  # [N] position in its dialogue, its dialogue's length
    offsets = torch.arange(-window_past, window_future + 1, device=device)  # [K]
    src_pos = pos[:, None] + offsets[None, :]  # [N, K]
    valid = (src_pos >= 0) & (src_pos < length[:, None])  # [N, K] inside the dialogue
    src = (node[:, None] + offsets[None, :])[valid]  # [E] target-major, sources ascending
    tgt = node[:, None].expand_as(src_pos)[valid]  # [E]
    direction = (src > tgt).long()  # [E] 0 past / self, 1 future
    edge_type = (speakers[src] * num_speakers + speakers[tgt]) * 2 + direction  # [E]
    return torch.stack([src, tgt]), edge_type


class RelationalGraph(nn.Module):
    """RGCNConv (relation-specific weights, basis decomposition) -> TransformerConv (multi-head attention over
    the same edges, heads concatenated) -> LeakyReLU, as COGMEN / JOYFUL.

    ``forward(x [N, dim_in], edge_index [2, E], edge_type [E]) -> [N, hidden * heads]`` (``out_dim``).
    ``num_bases``: RGCN basis matrices (capped at ``num_relations``; 0 = one full matrix per relation);
    ``heads``: TransformerConv heads (JOYFUL / COGMEN: 7); ``dropout``: between the two layers and on the
    attention weights.
    """

    def __init__(
        self, dim_in: int, hidden: int, num_relations: int, num_bases: int = 30, heads: int = 7, dropout: float = 0.1
    ):
        super().__init__()
        try:
            from torch_geometric.nn import RGCNConv, TransformerConv
        except ImportError as e:
            raise ImportError(GRAPH_HINT) from e
        self.num_relations, self.hidden, self.heads = num_relations, hidden, heads
        bases = min(num_bases, num_relations) if num_bases else None
        self.rgcn = RGCNConv(dim_in, hidden, num_relations, num_bases=bases)
        self.transformer = TransformerConv(hidden, hidden, heads=heads, concat=True, dropout=dropout)
        self.dropout = nn.Dropout(dropout)

    @property
    def out_dim(self) -> int:
        return self.hidden * self.heads

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_type: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.rgcn(x, edge_index, edge_type))  # [N, hidden]
        return F.leaky_relu(self.transformer(h, edge_index))  # [N, hidden * heads]


def augment(
    x: torch.Tensor,
    edge_index: torch.Tensor,
    edge_type: torch.Tensor,
    feature_mask: float = 0.25,
    edge_drop: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One GRACE-style view of a graph: feature masking (each of the F feature columns zeroed, for every node,
    with probability ``feature_mask``) and edge perturbation (each edge dropped with probability
    ``edge_drop``). x [N, F], edge_index [2, E], edge_type [E] -> (x' [N, F], edge_index' [2, E'],
    edge_type' [E']). ``generator`` (on x's device) makes the draw reproducible."""
    cols = torch.rand(x.shape[1], generator=generator, device=x.device) >= feature_mask  # [F] kept columns
    keep = torch.rand(edge_type.shape[0], generator=generator, device=x.device) >= edge_drop  # [E] kept edges
    return x * cols.to(x.dtype), edge_index[:, keep], edge_type[keep]


def grace_loss(u: torch.Tensor, v: torch.Tensor, tau: float = 0.2) -> torch.Tensor:
    """GRACE's symmetric InfoNCE between two views u, v [N, P] of the same N nodes -> scalar.

    With cosine similarity theta and l(u_i, v_i) = -log( e^{theta(u_i, v_i)/tau} /
    (sum_k e^{theta(u_i, v_k)/tau} + sum_{k != i} e^{theta(u_i, u_k)/tau}) ) (positive: the same node in the
    other view; negatives: every other node, in both views), loss = mean_i (l(u_i, v_i) + l(v_i, u_i)) / 2.
    """
    u, v = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
    eye = torch.eye(u.shape[0], dtype=torch.bool, device=u.device)
    target = torch.arange(u.shape[0], device=u.device)

    def one_way(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        between = a @ b.t() / tau  # [N, N] positives on the diagonal
        within = (a @ a.t() / tau).masked_fill(eye, float("-inf"))  # [N, N] no self-pair
        return F.cross_entropy(torch.cat([between, within], dim=1), target)  # [N, 2N] -> scalar

    return 0.5 * (one_way(u, v) + one_way(v, u))


def graph_contrastive_loss(h0: torch.Tensor, h1: torch.Tensor, h2: torch.Tensor, tau: float = 0.2) -> torch.Tensor:
    """JOYFUL's graph contrastive loss: the original graph's (projected) node embeddings h0 [N, P] against
    each of two augmented views h1, h2 [N, P]: (grace_loss(h0, h1) + grace_loss(h0, h2)) / 2 (temperature
    ``tau``, JOYFUL's 0.2). All identical embeddings give log(2N - 1)."""
    return 0.5 * (grace_loss(h0, h1, tau) + grace_loss(h0, h2, tau))
