"""JOYFUL (Li et al., EMNLP 2023): joint modality fusion and graph contrastive learning for the emotion of
every utterance of a conversation (IEMOCAP / MELD), composed from three parts given to the constructor:

1. ``AutoFusion`` (training/models/autofusion.py): each real utterance's text / audio / video feature
   vectors -> a fused code [N, F] (global ++ local auto-encoder codes) and its reconstruction terms;
2. a dialogue context (``DialogueContext`` of training/models/dialogue_context.py, or any module with its
   interface ``context(x [B, U, F], speakers [B, U], utterances [B, U]) -> [B, U, F]``, padding ignored): a
   Transformer over each dialogue's utterances;
3. ``RelationalGraph`` (training/models/dialogue_graph.py): RGCN -> TransformerConv over the window edges of
   ``dialogue_edges`` (speaker-pair and past / future relations), [N, F] -> [N, H];

then a classifier on [context row ; graph row] -> logits [N, C].

Graph contrastive learning (training only, when ``graph_contrastive``): two augmented views of the graph
(``augment``: 25 % of the feature columns zeroed, 10 % of the edges dropped) go through the same graph; the
three node embeddings, projected (Linear-ELU-Linear to ``proj_dim``), give ``graph_contrastive_loss``
(GRACE's InfoNCE, tau 0.2) as the output "graph_contrastive". The trainer's objective is
NLL + cl_loss_weight x graph_contrastive + encoder_loss_weight x reconstruction (+ gate_reg_weight x gate
regulariser for the hierarchical AutoFusion); the weights are applied there, not here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from avemo.training.models.autofusion import AutoFusion
from avemo.training.models.dialogue_graph import (
    RelationalGraph,
    augment,
    dialogue_edges,
    graph_contrastive_loss,
    num_relations,
)
from avemo.training.models.fusion import classifier

GRAPH_HIDDEN = 100  # COGMEN / JOYFUL's graph hidden size (times 7 heads: 700 graph features per utterance)
GRAPH_HEADS = 7


class JoyfulModel(nn.Module):
    """AutoFusion -> dialogue context -> relational graph -> classifier (see the module docstring).

    Call: ``model(x_1, ..., x_M, mask [B, U, M] float, speakers [B, U] int64, utterances [B, U] bool)`` with
    x_m [B, U, D_m] (dialogues padded to U utterances; ``utterances`` marks the real ones). Every row-indexed
    output has N = utterances.sum() rows, the real utterances in row-major order (dialogue 0's first):
      logits [N, C], modality_weights [N, M] (AutoFusion's attention over the present modalities),
      recon / recon_target [N, sum D_m], recon_<m> / target_<m> [N, D_m], gate [N, M] (hierarchical fusion),
      graph_contrastive (scalar; training mode with ``graph_contrastive`` only).
    Positions inside a dialogue (for the graph's windows) count its real utterances in order.
    """

    task = "classification"
    dialogue = True

    def __init__(
        self,
        fusion: AutoFusion,
        context: nn.Module,
        graph: RelationalGraph,
        num_outputs: int,
        modalities: tuple[str, ...],
        num_speakers: int,
        window_past: int,
        window_future: int,
        dropout: float = 0.3,
        proj_dim: int = 64,
    ):
        super().__init__()
        self.modalities = tuple(modalities)
        self.input_names = self.modalities
        if tuple(fusion.modalities) != self.modalities:
            raise ValueError(f"AutoFusion's modalities {fusion.modalities} differ from the model's {self.modalities}")
        relations = getattr(graph, "num_relations", None)
        if relations is not None and relations != num_relations(num_speakers):
            raise ValueError(f"the graph has {relations} relations; {num_speakers} speakers need 2 * S^2")
        self.num_speakers, self.window_past, self.window_future = num_speakers, window_past, window_future
        self.graph_contrastive = True  # the trainer sets False when the contrastive weight is 0
        self.feature_mask, self.edge_drop, self.tau = 0.25, 0.1, 0.2  # JOYFUL's augmentations and temperature
        self.fusion = fusion
        self.context = context
        self.graph = graph
        self.head = classifier(fusion.out_dim + graph.out_dim, fusion.out_dim, num_outputs, dropout)
        # GRACE's projection head (Linear-ELU-Linear), narrow: [N, H] -> [N, proj_dim]
        self.proj = nn.Sequential(nn.Linear(graph.out_dim, proj_dim), nn.ELU(), nn.Linear(proj_dim, proj_dim))

    def _split(self, args: tuple) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor, torch.Tensor]:
        n = len(self.modalities)
        if len(args) != n + 3:
            raise TypeError(f"expected {n} inputs ({', '.join(self.input_names)}), mask, speakers and utterances")
        return args[:n], args[n], args[n + 1], args[n + 2].bool()

    def forward(self, *args: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs, mask, speakers, utterances = self._split(args)
        rows = [x[utterances] for x in inputs]  # M x [N, D_m] real utterances, row-major
        out = self.fusion(rows, mask[utterances].to(rows[0].dtype))  # AutoFusion on [N, M] mask
        fused = out.pop("fused")  # [N, F]
        grid = fused.new_zeros(*utterances.shape, fused.shape[1])  # [B, U, F]
        grid[utterances] = fused
        ctx = self.context(grid, speakers, utterances)[utterances]  # [N, F]
        edge_index, edge_type = dialogue_edges(
            utterances.sum(dim=1), speakers[utterances], self.window_past, self.window_future, self.num_speakers
        )  # [2, E], [E]
        h = self.graph(ctx, edge_index, edge_type)  # [N, H]
        result = {"logits": self.head(torch.cat([ctx, h], dim=1))}  # [N, C]
        result.update(out)
        if self.training and self.graph_contrastive:
            views = [
                self.graph(*augment(ctx, edge_index, edge_type, self.feature_mask, self.edge_drop)) for _ in range(2)
            ]
            z0, z1, z2 = (self.proj(v) for v in (h, *views))  # 3 x [N, proj_dim]
            result["graph_contrastive"] = graph_contrastive_loss(z0, z1, z2, self.tau)
        return result

    @torch.no_grad()
    def forward_dropping(self, *args: torch.Tensor, keeps: list[tuple[float, ...]]) -> list[dict[str, torch.Tensor]]:
        """Evaluation outputs (eval mode, no gradients; the mode is restored after) under several masks: one
        output dict per ``keeps`` row (a 0 / 1 per modality), each ``forward`` with the dropped modalities'
        inputs zeroed and their mask columns 0."""
        inputs, mask, speakers, utterances = self._split(args)
        was_training = self.training
        self.eval()
        try:
            outs = []
            for row in keeps:
                keep = mask.new_tensor(row)  # [M]
                xs = [x * keep[i].to(x.dtype) for i, x in enumerate(inputs)]
                outs.append(self(*xs, mask * keep, speakers, utterances))
        finally:
            self.train(was_training)
        return outs


def build_joyful(cfg, make_context: Callable[[object, int], nn.Module]) -> JoyfulModel:
    """A ``JoyfulModel`` from a ``ModelConfig`` (a dialogue feature model: ``input_dims``, ``num_speakers``):
    AutoFusion with JOYFUL's sizes (``joyful_variant`` "hierarchical" adds the gate), ``make_context(cfg,
    dim)`` over its output, the graph with COGMEN's sizes over ``window_past`` / ``window_future`` (0 for
    ``context`` "past": a live conversation has no future utterances)."""
    if cfg.task != "classification":
        raise ValueError(f"joyful classifies utterances; task {cfg.task!r} is not supported")
    if len(cfg.modalities) < 2 or not cfg.input_dims:
        raise ValueError(f"joyful needs feature inputs of two or more modalities, got {cfg.modalities}")
    fusion = AutoFusion(
        {m: int(cfg.input_dims[m]) for m in cfg.modalities}, hierarchical=cfg.joyful_variant == "hierarchical"
    )
    context = make_context(cfg, fusion.out_dim)
    graph = RelationalGraph(fusion.out_dim, GRAPH_HIDDEN, num_relations(cfg.num_speakers), heads=GRAPH_HEADS)
    window_future = 0 if getattr(cfg, "context", "full") == "past" else cfg.window_future
    return JoyfulModel(
        fusion,
        context,
        graph,
        cfg.num_outputs,
        tuple(cfg.modalities),
        cfg.num_speakers,
        cfg.window_past,
        window_future,
        cfg.dropout,
    )
