"""Conversations end to end: the dialogue context (padding, past only, identity at start), dialogue batches
whose model rows line up with the flattened labels, and the CLI on tiny generated IEMOCAP / MELD files
(train, resume, evaluate per utterance, JOYFUL with its three losses, usage errors)."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from avemo.cli import main
from avemo.contract.geometry import DEFAULT_GEOMETRY
from avemo.training.data.dialogue_dataset import prepare_dialogues
from avemo.training.models.config import FUSIONS, ModelConfig
from avemo.training.models.dialogue_context import DialogueContext
from avemo.training.models.model import build_model, model_inputs
from avemo.training.synthetic.dialogues import write_dialogue_file

DIMS = {"text": 6, "audio": 5, "video": 4}


@pytest.fixture(scope="module")
def iemocap_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dlg") / "iemocap.pkl"
    return write_dialogue_file(path, layout="iemocap", dialogues=(12, 4), utterances=(4, 9), dims=DIMS, seed=0)


@pytest.fixture(scope="module")
def meld_text_audio_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dlg") / "meld.pkl"
    return write_dialogue_file(path, layout="meld", visual=False, dialogues=(12, 4), utterances=(3, 6), dims=DIMS)


def _context(past_only: bool) -> DialogueContext:
    torch.manual_seed(0)
    ctx = DialogueContext(8, num_speakers=2, layers=2, heads=2, dropout=0.0, past_only=past_only).eval()
    torch.nn.init.normal_(ctx.out.weight)  # a trained context: the zero-initialised output would hide everything
    return ctx


def test_a_new_context_is_the_identity_and_zero_on_padding():
    ctx = DialogueContext(8, num_speakers=2, heads=2).eval()
    x, utterances = torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = ctx(x, torch.zeros(2, 5, dtype=torch.int64), utterances)
    assert torch.equal(out[utterances], x[utterances])
    assert torch.equal(out[~utterances], torch.zeros_like(out[~utterances]))


@pytest.mark.parametrize("past_only", [False, True])
def test_padding_never_changes_a_real_utterance(past_only):
    ctx = _context(past_only)
    x, speakers = torch.randn(1, 4, 8), torch.tensor([[0, 1, 1, 0]])
    alone = ctx(x, speakers, torch.ones(1, 4, dtype=torch.bool))
    padded_x = torch.cat([x, 100 * torch.randn(1, 3, 8)], 1)  # garbage after the dialogue
    padded = ctx(padded_x, torch.cat([speakers, torch.tensor([[1, 0, 1]])], 1), torch.arange(7)[None] < 4)
    torch.testing.assert_close(padded[:, :4], alone, rtol=1e-5, atol=1e-5)


def test_past_only_context_never_sees_a_later_utterance_and_full_context_does():
    x, speakers, utterances = torch.randn(1, 6, 8), torch.tensor([[0, 1, 0, 1, 0, 1]]), torch.ones(1, 6).bool()
    later = x.clone()
    later[0, 4] += 5.0  # what utterance 4 says changes
    for past_only in (True, False):
        ctx = _context(past_only)
        before, after = ctx(x, speakers, utterances), ctx(later, speakers, utterances)
        earlier_changed = not torch.allclose(before[0, :4], after[0, :4])
        assert earlier_changed is not past_only, f"past_only={past_only}"


@pytest.fixture(scope="module")
def datasets(iemocap_file):
    return prepare_dialogues(iemocap_file, "iemocap")


def _model(datasets, context: str = "full", fusion: str = "gated") -> torch.nn.Module:
    ds, info = datasets[0]["train"], datasets[1]
    cfg = ModelConfig(
        fusion=fusion,
        num_classes=6,
        modalities=("text", "audio", "video"),
        input_dims=info["input_dims"],
        seq_lens=info["seq_lens"],
        num_speakers=info["num_speakers"],
        context=context,
        embed_dim=16,
        transformer_heads=2,
        modality_dropout=0.0,
        gate_init_audio=1 / 3,
    )
    torch.manual_seed(0)
    model = build_model(cfg, DEFAULT_GEOMETRY).eval()
    for name, p in model.named_parameters():
        if name.endswith("out.weight"):  # the contexts' zero-initialised output: make the context matter
            torch.nn.init.normal_(p, std=0.5)
    assert ds.num_classes == 6
    return model


def test_a_batch_has_one_model_row_per_utterance_in_label_order(datasets):
    ds = datasets[0]["train"]
    model = _model(datasets)
    batch = ds.collate([ds[i] for i in range(4)])
    out = model(*model_inputs(model, batch))
    counts = [len(ds.dialogues[i]) for i in range(4)]
    assert out["logits"].shape == (sum(counts), 6) and batch["label"].shape == (sum(counts),)
    assert batch["utterances"].sum(1).tolist() == counts
    assert batch["clip"].tolist() == list(range(sum(counts)))
    expected = torch.cat([torch.as_tensor(ds.dialogues[i].labels) for i in range(4)])
    assert torch.equal(batch["label"], expected)
    # each dialogue alone gives the rows it has inside the padded batch: order kept, padding ignored
    start = 0
    for i, n in enumerate(counts):
        single = ds.collate([ds[i]])
        alone = model(*model_inputs(model, single))["logits"]
        torch.testing.assert_close(out["logits"][start : start + n], alone, rtol=1e-4, atol=1e-5)
        start += n


def test_context_makes_an_utterance_depend_on_its_dialogue_and_none_does_not(datasets):
    ds = datasets[0]["train"]
    batch = ds.collate([ds[0]])
    changed = {k: v.clone() for k, v in batch.items()}
    changed["text"][0, 1:] += 3.0  # every utterance but the first says something else
    for context, depends in (("full", True), ("none", False)):
        model = _model(datasets, context)
        first = model(*model_inputs(model, batch))["logits"][0]
        first_changed = model(*model_inputs(model, changed))["logits"][0]
        assert (not torch.allclose(first, first_changed)) is depends, context


@pytest.mark.parametrize("fusion", [f for f in FUSIONS if f not in ("audio", "video")] + ["joyful"])
def test_every_fusion_answers_and_learns_per_utterance_under_a_context(datasets, fusion):
    ds = datasets[0]["train"]
    model = _model(datasets, "past", fusion).train()
    batch = ds.collate([ds[i] for i in range(3)])
    out = model(*model_inputs(model, batch))
    n = int(batch["utterances"].sum())
    assert out["logits"].shape == (n, 6) and out["modality_weights"].shape == (n, 3)
    torch.nn.functional.cross_entropy(out["logits"], batch["label"]).backward()
    assert all(p.grad is not None for n_, p in model.named_parameters() if "context" in n_ and "speaker" not in n_)


def test_forward_dropping_equals_forward_with_the_modality_masked(datasets):
    ds = datasets[0]["train"]
    model = _model(datasets)
    batch = ds.collate([ds[i] for i in range(3)])
    dropped = model.forward_dropping(*model_inputs(model, batch), keeps=[(1.0, 0.0, 1.0)])[0]
    masked = dict(batch, mask=batch["mask"] * torch.tensor([1.0, 0.0, 1.0]), audio=torch.zeros_like(batch["audio"]))
    torch.testing.assert_close(dropped["logits"], model(*model_inputs(model, masked))["logits"])


def _train(tmp_path, data, *flags, out="run"):
    argv = ["train", "--data_root", str(data), "--out_dir", str(tmp_path / out), "--no_progress", "--json"]
    assert main([*argv, "--tiny", *flags]) == 0
    return tmp_path / out


def test_train_resume_and_evaluate_per_utterance_on_iemocap(tmp_path, iemocap_file, capsys):
    out = _train(tmp_path, iemocap_file, "--dataset", "iemocap", "--epochs", "2")
    res = json.loads((out / "metrics.json").read_text())
    assert {p.name for p in out.iterdir()} >= {
        "best.pt",
        "last.pt",
        "metrics.json",
        "history.png",
        "confusion_test.png",
        "per_class_report.md",
        "error_cases.md",
    }
    assert res["labels"] == ["hap", "sad", "neu", "ang", "exc", "fru"]
    assert res["config"]["model"]["num_speakers"] == 2 and res["config"]["model"]["context"] == "full"
    assert res["test"]["clip"]["n"] == res["utterances"]["test"] and res["dialogues"]["test"] == 4
    assert "best_val_weighted_f1" in res and "val_weighted_f1" in res["history"][-1]
    capsys.readouterr()
    _train(tmp_path, iemocap_file, "--dataset", "iemocap", "--epochs", "3", "--resume")
    resumed = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][:2] == res["history"][:2]
    capsys.readouterr()
    evaluate = ["evaluate", str(out / "best.pt"), "--dataset", "iemocap", "--data_root", str(iemocap_file), "--json"]
    assert main(evaluate) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["clip"]["weighted_f1"] == pytest.approx(resumed["test"]["clip"]["weighted_f1"])
    assert main([*evaluate, "--drop", "video"]) == 0
    dropped = json.loads(capsys.readouterr().out)
    assert dropped["condition"]["drop"] == "video" and dropped["clip"]["n"] == ev["clip"]["n"]
    # a conversation model exports over a whole dialogue, under its dataset's name (test_dialogue_export.py)
    assert main(["export", str(out / "best.pt"), "--model-repository", str(tmp_path / "repo")]) == 0
    assert "dialogue model" in capsys.readouterr().out and (tmp_path / "repo" / "iemocap" / "config.pbtxt").is_file()


def test_meld_without_visual_trains_on_text_and_audio_and_refuses_video(tmp_path, meld_text_audio_file, capsys):
    out = _train(tmp_path, meld_text_audio_file, "--dataset", "meld_sentiment", "--epochs", "1")
    res = json.loads((out / "metrics.json").read_text())
    assert res["config"]["model"]["modalities"] == ["text", "audio"]
    assert res["labels"] == ["neutral", "positive", "negative"]
    with pytest.raises(SystemExit, match="no visual features"):
        _train(tmp_path, meld_text_audio_file, "--dataset", "meld", "--modalities", "atv", "--epochs", "1", out="v")


def test_joyful_trains_with_its_three_losses(tmp_path, iemocap_file):
    out = _train(tmp_path, iemocap_file, "--preset", "joyful", "--epochs", "1", "--window_past", "3")
    res = json.loads((out / "metrics.json").read_text())
    epoch = res["history"][0]
    assert {"train_loss_ce", "train_loss_contrastive", "train_loss_recon", "train_loss_gate_reg"} <= set(epoch)
    assert epoch["train_loss_w_contrastive"] == pytest.approx(0.2)
    assert epoch["train_loss_w_recon"] == pytest.approx(0.05)
    assert res["fusion"] == "joyful" and res["config"]["model"]["window_past"] == 3
    no_cl = _train(tmp_path, iemocap_file, "--preset", "joyful", "--epochs", "1", "--cl_loss_weight", "0", out="nocl")
    assert "train_loss_contrastive" not in json.loads((no_cl / "metrics.json").read_text())["history"][0]


def test_joyful_without_the_graph_library_is_a_usage_error_naming_the_extra(
    tmp_path, iemocap_file, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "torch_geometric", None)  # as if .[graph] were not installed
    with pytest.raises(SystemExit) as e:
        main(["train", "--preset", "joyful", "--data_root", str(iemocap_file), "--out_dir", str(tmp_path / "r")])
    assert e.value.code == 2 and "pip install -e '.[graph]'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dataset", "mosei", "--fusion", "joyful"], "models conversations"),
        (["--dataset", "iemocap", "--task", "regression"], "needs a feature dataset with a sentiment score"),
        (["--dataset", "iemocap", "--num_classes", "4"], "--num_classes must be one of 6"),
        (["--dataset", "iemocap", "--fusion", "gated", "--window_past", "3"], "only applies to --fusion joyful"),
        (["--dataset", "ravdess", "--context", "past"], "applies to conversation datasets"),
    ],
)
def test_usage_errors_name_the_flag(tmp_path, iemocap_file, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        main(["train", "--data_root", str(iemocap_file), "--out_dir", str(tmp_path / "r"), *flags])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_the_ablation_search_keeps_joyful_and_adds_no_infonce_projections(tmp_path):
    from avemo.training.search.launcher import SearchRequest, fixed_train_argv
    from avemo.training.search.space import build_space
    from avemo.training.search.worker import train_parser, trial_config

    parser, space = train_parser(), build_space("ablation")
    for fixed in (["--preset", "joyful"], ["--dataset", "iemocap", "--fusion", "joyful"]):
        argv, _ = fixed_train_argv(SearchRequest("ablation", space, fixed), tmp_path, parser)
        assert "--contrastive_proj_dim" not in argv and "hierarchical" not in argv, argv
        assert trial_config(argv, parser).model.fusion == "joyful"
    clips, _ = fixed_train_argv(SearchRequest("ablation", space, []), tmp_path, parser)
    assert clips[clips.index("--fusion") + 1] == "hierarchical" and "--contrastive_proj_dim" in clips


@pytest.mark.slow
def test_a_search_over_joyfuls_loss_weights_runs_on_a_conversation_file(tmp_path, iemocap_file, capsys):
    folder = tmp_path / "search"
    argv = ["search", "custom", "--param", "cl_loss_weight=0,0.2", "--preset", "joyful", "--data_root"]
    argv += [str(iemocap_file), "--epochs", "1", "--tiny", "--dir", str(folder), "--json", "--no_progress"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["finished"] == 2
    runs = [json.loads((folder / "trials" / d / "metrics.json").read_text()) for d in os.listdir(folder / "trials")]
    assert sorted(r["config"]["losses"]["contrastive"] for r in runs) == [0.0, 0.2]
    assert all(r["fusion"] == "joyful" and r["config"]["dataset"] == "iemocap" for r in runs)
    assert sorted("train_loss_contrastive" in r["history"][0] for r in runs) == [False, True]
