"""JOYFUL: AutoFusion (shapes, mask, gate, reconstruction losses), the dialogue graph's edges, augmentations and
contrastive loss, and JoyfulModel (rows, padding invariance, training, forward_dropping). Tiny sizes throughout;
the tests that run the graph need the optional torch_geometric (``.[graph]``, which ``make test`` installs)."""

from __future__ import annotations

import importlib
import math
import sys

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from avemo.training.losses.terms import reconstruction_loss
from avemo.training.losses.total import LossWeights, loss_terms
from avemo.training.models.autofusion import AutoFusion
from avemo.training.models.dialogue_graph import augment, dialogue_edges, graph_contrastive_loss, num_relations

DIMS = {"text": 6, "audio": 5, "video": 7}
MODALITIES = tuple(DIMS)
C, S = 3, 2  # classes, speakers


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny graphs: one intra-op thread is faster, and immune to a busy machine (OpenMP threads waiting on a
    descheduled peer made PyG's small scatters take milliseconds each); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_fusion(hierarchical: bool = False) -> AutoFusion:
    return AutoFusion(DIMS, code_dim=8, hidden=16, local_dim=12, hierarchical=hierarchical)


def fusion_inputs(n: int = 5, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """M inputs [n, D_m] and a mask [n, M]: row 1 without video, row 2 text only, the others complete."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, d, generator=g) for d in DIMS.values()]
    mask = torch.ones(n, len(DIMS))
    mask[1, 2] = 0.0
    mask[2, 1:] = 0.0
    return xs, mask


# ------------------------------------------------------------------------------ AutoFusion


@pytest.mark.parametrize("hierarchical", [False, True])
def test_autofusion_shapes_weights_and_mask(hierarchical):
    torch.manual_seed(0)
    fusion = tiny_fusion(hierarchical).eval()
    xs, mask = fusion_inputs()
    out = fusion(xs, mask)
    n, total = mask.shape[0], sum(DIMS.values())
    assert fusion.out_dim == 16 and out["fused"].shape == (n, 16)
    assert out["recon"].shape == out["recon_target"].shape == (n, total)
    for m, d in DIMS.items():
        assert out[f"recon_{m}"].shape == out[f"target_{m}"].shape == (n, d)
        assert not out[f"target_{m}"].requires_grad
    assert ("gate" in out) == hierarchical
    w = out["modality_weights"]
    assert w.shape == (n, 3) and torch.allclose(w.sum(dim=1), torch.ones(n))
    assert w[1, 2] == 0 and (w[2, 1:] == 0).all() and w[2, 0] == 1
    if hierarchical:
        gate = out["gate"]
        assert gate.shape == (n, 3) and torch.allclose(gate.sum(dim=1), torch.ones(n))
        assert gate[1, 2] == 0 and (gate[2, 1:] == 0).all()
        assert torch.allclose(gate[0], torch.full((3,), 1 / 3), atol=0.05)  # initialised uniform
    # a missing modality: zero target and reconstruction blocks, and its content changes nothing
    assert (out["target_video"][1] == 0).all() and (out["recon_video"][1] == 0).all()
    assert (out["recon"][2, DIMS["text"] :] == 0).all()
    garbage = [x.clone() for x in xs]
    garbage[2][1] = 1e3
    garbage[1][2], garbage[2][2] = -1e3, 1e3
    again = fusion(garbage, mask)
    for k, v in out.items():
        assert torch.allclose(v, again[k]), k


def test_autofusion_reconstruction_terms_mse_and_smooth_l1():
    torch.manual_seed(0)
    fusion = tiny_fusion(hierarchical=True)
    xs, mask = fusion_inputs()
    out = fusion([5.0 * x for x in xs], mask)  # large errors: SmoothL1 (|d| - 0.5) is well below MSE
    for smooth in (False, True):
        hand = F.smooth_l1_loss if smooth else F.mse_loss
        expected = hand(out["recon"], out["recon_target"]) + sum(
            hand(out[f"recon_{m}"], out[f"target_{m}"]) for m in MODALITIES
        )
        got = reconstruction_loss(out["recon"], out["recon_target"], smooth) + sum(
            reconstruction_loss(out[f"recon_{m}"], out[f"target_{m}"], smooth) for m in MODALITIES
        )
        assert torch.allclose(got, expected)
        weights = LossWeights(use_smooth_l1=smooth, use_class_weight=False)
        terms, extra = loss_terms(
            {"logits": torch.zeros(5, C), **out}, torch.zeros(5).long(), weights, None, None, MODALITIES
        )
        assert torch.allclose(terms["recon"][0], expected) and "gate_reg" in terms
        assert set(extra) == {f"recon_{m}" for m in MODALITIES}
    mse = reconstruction_loss(out["recon"], out["recon_target"], False)
    assert reconstruction_loss(out["recon"], out["recon_target"], True) < mse
    mse.backward()
    assert fusion.enc_global[0].weight.grad is not None and fusion.project["text"].weight.grad is not None


# ------------------------------------------------------------------------------ dialogue graph


def test_dialogue_edges_hand_example():
    counts, speakers = torch.tensor([3, 2]), torch.tensor([0, 1, 0, 1, 1])  # dialogue 0: nodes 0-2, 1: nodes 3-4
    edge_index, edge_type = dialogue_edges(counts, speakers, window_past=1, window_future=1, num_speakers=2)
    # (source, target, relation = (spk[s] * 2 + spk[t]) * 2 + (s > t)), target by target
    expected = [
        (0, 0, 0), (1, 0, 5),
        (0, 1, 2), (1, 1, 6), (2, 1, 3),
        (1, 2, 4), (2, 2, 0),
        (3, 3, 6), (4, 3, 7),
        (3, 4, 6), (4, 4, 6),
    ]  # fmt: skip
    assert edge_index.dtype == edge_type.dtype == torch.int64
    assert list(zip(*edge_index.tolist(), edge_type.tolist())) == expected
    edge_index, edge_type = dialogue_edges(counts, speakers.tolist(), window_past=1, window_future=0, num_speakers=2)
    past = [(s, t, r) for s, t, r in expected if s <= t]
    assert list(zip(*edge_index.tolist(), edge_type.tolist())) == past
    assert num_relations(2) == 8 and num_relations(9) == 162


@pytest.mark.parametrize("window_past, window_future", [(0, 0), (2, 0), (1, 3), (10, 10)])
def test_dialogue_edges_match_loops_and_never_cross(window_past, window_future):
    g = torch.Generator().manual_seed(window_past * 7 + window_future)
    counts = torch.tensor([4, 1, 6, 3])
    speakers = torch.randint(0, 3, (int(counts.sum()),), generator=g)
    edge_index, edge_type = dialogue_edges(counts, speakers, window_past, window_future, num_speakers=3)
    expected, start = [], 0
    for n in counts.tolist():
        for t in range(start, start + n):
            for s in range(max(start, t - window_past), min(start + n, t + window_future + 1)):
                expected.append((s, t, (int(speakers[s]) * 3 + int(speakers[t])) * 2 + int(s > t)))
        start += n
    assert list(zip(*edge_index.tolist(), edge_type.tolist())) == expected
    dialogue = torch.repeat_interleave(torch.arange(4), counts)
    assert (dialogue[edge_index[0]] == dialogue[edge_index[1]]).all()
    if window_future == 0:
        assert (edge_index[0] <= edge_index[1]).all() and (edge_type % 2 == 0).all()
    assert int(edge_type.max()) < num_relations(3)


def test_dialogue_edges_checks_speakers():
    with pytest.raises(ValueError, match="speaker ids"):
        dialogue_edges(torch.tensor([2]), torch.tensor([0, 2]), 1, 1, num_speakers=2)
    with pytest.raises(ValueError, match="speakers for"):
        dialogue_edges(torch.tensor([3]), torch.tensor([0, 1]), 1, 1, num_speakers=2)


def test_augment_masks_columns_and_drops_edges():
    x = torch.randn(50, 400) + 5.0  # no zero entries
    edge_index = torch.randint(0, 50, (2, 20000))
    edge_type = torch.randint(0, 8, (20000,))
    g = torch.Generator().manual_seed(0)
    x1, ei1, et1 = augment(x, edge_index, edge_type, feature_mask=0.25, edge_drop=0.1, generator=g)
    zero_cols = (x1 == 0).all(dim=0)
    assert abs(float(zero_cols.float().mean()) - 0.25) < 0.06
    assert torch.equal(x1[:, ~zero_cols], x[:, ~zero_cols])  # the other columns are untouched
    assert abs(1 - ei1.shape[1] / 20000 - 0.1) < 0.01 and et1.shape[0] == ei1.shape[1]
    kept = set(zip(*ei1.tolist(), et1.tolist()))
    assert kept <= set(zip(*edge_index.tolist(), edge_type.tolist()))  # a subset of the edges, types kept
    again = augment(x, edge_index, edge_type, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], x1) and torch.equal(again[1], ei1)


def test_graph_contrastive_loss_prefers_matching_views():
    torch.manual_seed(0)
    h = torch.randn(32, 16)
    same = graph_contrastive_loss(h, h, h)
    shuffled = graph_contrastive_loss(h, h[torch.randperm(32)], h[torch.randperm(32)])
    assert same < shuffled
    flat = torch.ones(32, 16)
    assert torch.allclose(graph_contrastive_loss(flat, flat, flat), torch.tensor(math.log(63.0)))


def test_modules_import_without_torch_geometric(monkeypatch):
    for name in [k for k in sys.modules if k == "torch_geometric" or k.startswith("torch_geometric.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "torch_geometric", None)
    package = importlib.import_module("avemo.training.models")
    for name in ("dialogue_graph", "autofusion", "joyful"):  # fresh copies now, the originals back afterwards
        monkeypatch.delitem(sys.modules, f"avemo.training.models.{name}", raising=False)
        monkeypatch.delattr(package, name, raising=False)
    graph = importlib.import_module("avemo.training.models.dialogue_graph")
    importlib.import_module("avemo.training.models.autofusion")
    importlib.import_module("avemo.training.models.joyful")
    assert graph.dialogue_edges(torch.tensor([2]), [0, 1], 1, 1, 2)[0].shape == (2, 4)
    with pytest.raises(ImportError, match=r"\.\[graph\]"):
        graph.RelationalGraph(8, 4, 8)


# ------------------------------------------------------------------------------ JoyfulModel


class TinyContext(nn.Module):
    """Stand-in with DialogueContext's interface: one Transformer layer over each dialogue, padding masked."""

    def __init__(self, dim: int):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True)

    def forward(self, x, speakers, utterances):
        return self.layer(x, src_key_padding_mask=~utterances) * utterances[:, :, None].to(x.dtype)


def tiny_joyful(context: nn.Module | None = None, window_future: int = 2):
    import torch_geometric  # noqa: F401  (make test installs .[graph]: a missing library fails, never skips)

    from avemo.training.models.dialogue_graph import RelationalGraph
    from avemo.training.models.joyful import JoyfulModel

    fusion = tiny_fusion(hierarchical=True)
    graph = RelationalGraph(fusion.out_dim, 8, num_relations(S), num_bases=4, heads=2, dropout=0.0)
    context = context or TinyContext(fusion.out_dim)
    return JoyfulModel(fusion, context, graph, C, MODALITIES, S, 2, window_future, dropout=0.1, proj_dim=8)


def dialogue_batch(lengths=(4, 2, 3), pad_to: int | None = None, seed: int = 0, garbage: bool = False):
    """(x_t, x_a, x_v, mask, speakers, utterances) for dialogues of the given lengths, padded to ``pad_to``;
    the real utterances' values depend only on the seed; the padding is zeros or (garbage) anything."""
    g = torch.Generator().manual_seed(seed)
    b, u = len(lengths), max(lengths)
    xs = [torch.randn(b, u, d, generator=g) for d in DIMS.values()]
    mask = (torch.rand(b, u, len(DIMS), generator=g) > 0.2).float()
    mask[..., 0] = 1.0
    speakers = torch.randint(0, S, (b, u), generator=g)
    pad_to = pad_to or u
    utterances = torch.arange(pad_to)[None, :] < torch.tensor(lengths)[:, None]  # [B, U]
    filler = (lambda *shape: 100 * torch.randn(*shape, generator=g)) if garbage else torch.zeros
    xs = [torch.cat([x, filler(b, pad_to - u, x.shape[2])], dim=1) for x in xs]
    mask = torch.cat([mask, (filler(b, pad_to - u, len(DIMS)) > 0).float()], dim=1)
    speakers = torch.cat([speakers, torch.randint(0, S, (b, pad_to - u), generator=g)], dim=1)
    for i, n in enumerate(lengths):  # padding inside the shorter dialogues too
        for x in xs:
            x[i, n:] = filler(pad_to - n, x.shape[2]) if garbage else 0.0
    return (*xs, mask, speakers, utterances)


def test_joyful_rows_keys_and_modes():
    torch.manual_seed(0)
    model = tiny_joyful()
    assert (model.task, model.dialogue, model.graph_contrastive, model.input_names) == (
        "classification",
        True,
        True,
        MODALITIES,
    )
    batch = dialogue_batch()
    out = model.train()(*batch)
    n = int(batch[-1].sum())
    assert out["logits"].shape == (n, C) and out["graph_contrastive"].dim() == 0
    for key in ("modality_weights", "gate", "recon", "recon_target", *(f"recon_{m}" for m in MODALITIES)):
        assert out[key].shape[0] == n, key
    model.graph_contrastive = False
    assert "graph_contrastive" not in model(*batch)
    model.graph_contrastive = True
    assert "graph_contrastive" not in model.eval()(*batch)


def test_joyful_padding_does_not_change_real_utterances():
    torch.manual_seed(0)
    model = tiny_joyful().eval()
    with torch.no_grad():
        tight = model(*dialogue_batch(seed=3))
        padded = model(*dialogue_batch(seed=3, pad_to=7, garbage=True))
    for key, value in tight.items():
        assert torch.allclose(value, padded[key], atol=1e-5), key


def test_joyful_forward_dropping_equals_forward_with_zeroed_modality():
    torch.manual_seed(0)
    model = tiny_joyful().train()
    batch = dialogue_batch(seed=1)
    keeps = [(1.0, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, 0.0)]
    outs = model.forward_dropping(*batch, keeps=keeps)
    assert model.training  # the mode is restored
    model.eval()
    for keep, out in zip(keeps, outs):
        k = torch.tensor(keep)
        xs = [x * k[i] for i, x in enumerate(batch[:3])]
        with torch.no_grad():
            ref = model(*xs, batch[3] * k, *batch[4:])
        assert set(out) == set(ref) and "graph_contrastive" not in out
        for key in ref:
            assert torch.allclose(out[key], ref[key], atol=1e-5), key
        dropped = [i for i, v in enumerate(keep) if v == 0]
        assert all((out["modality_weights"][:, i] == 0).all() for i in dropped)


def joint_loss(out: dict, labels: torch.Tensor) -> torch.Tensor:
    """NLL + 0.2 x graph contrastive + 0.05 x reconstruction (global + per modality, MSE)."""
    recon = reconstruction_loss(out["recon"], out["recon_target"]) + sum(
        reconstruction_loss(out[f"recon_{m}"], out[f"target_{m}"]) for m in MODALITIES
    )
    nll = F.nll_loss(F.log_softmax(out["logits"], dim=-1), labels)
    return nll + 0.2 * out.get("graph_contrastive", 0.0) + 0.05 * recon


def test_joyful_learns_a_tiny_dialogue_problem():
    torch.manual_seed(0)
    model = tiny_joyful()
    batch = list(dialogue_batch(lengths=(6, 5, 4, 6), seed=2))
    utterances = batch[-1]
    labels = torch.randint(0, C, utterances.shape)  # [B, U]
    batch[0] = batch[0] + 2.0 * F.one_hot(labels, DIMS["text"]).float()  # the text says the class
    labels = labels[utterances]  # [N] row-major like the outputs

    def measured() -> float:
        torch.manual_seed(123)  # the same augmentations and dropout each time
        with torch.no_grad():
            return float(joint_loss(model(*batch), labels))

    model.train()
    before = measured()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = joint_loss(model(*batch), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = measured()
    assert after < 0.7 * before, (before, after)


def test_joyful_with_the_dialogue_context():
    import torch_geometric  # noqa: F401  (make test installs .[graph]: a missing library fails, never skips)

    from avemo.training.models import dialogue_context as context_module

    torch.manual_seed(0)
    model = tiny_joyful(context_module.DialogueContext(16, S, layers=1, heads=2, dropout=0.0, past_only=True), 0)
    out = model.train()(*dialogue_batch())
    (out["logits"].sum() + out["graph_contrastive"]).backward()
    assert model.context.out.weight.grad is not None
    with torch.no_grad():
        tight = model.eval()(*dialogue_batch(seed=4))
        padded = model(*dialogue_batch(seed=4, pad_to=6, garbage=True))
    assert torch.allclose(tight["logits"], padded["logits"], atol=1e-5)


@pytest.mark.parametrize("context, variant", [("past", "hierarchical"), ("none", "plain")])
def test_build_joyful_from_a_model_config(context, variant):
    import torch_geometric  # noqa: F401  (make test installs .[graph]: a missing library fails, never skips)

    from avemo.training.models import dialogue_context as context_module
    from avemo.training.models.config import ModelConfig
    from avemo.training.models.joyful import JoyfulModel, build_joyful

    cfg = ModelConfig(
        fusion="joyful",
        modalities=MODALITIES,
        input_dims=DIMS,
        num_classes=C,
        num_speakers=S,
        context=context,
        joyful_variant=variant,
    )
    model = build_joyful(cfg, context_module.make_context)
    assert isinstance(model, JoyfulModel) and model.window_future == (0 if context == "past" else cfg.window_future)
    out = model.eval()(*dialogue_batch())
    assert out["logits"].shape == (9, C) and ("gate" in out) == (variant == "hierarchical")
