"""`avemo search` on a feature file (--dataset mosei): seed 002's regression model searched as the grid-search
guide says. The fixed flags and the unimodal feature teachers, the regression summary and report, and the real
CLI on a tiny generated MOSEI-layout file (teachers trained once, ranked by validation MSE, the field's figures).

The study machinery itself (duplicates, resume, dead workers) is shared with clips: see test_search.py.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest

from avemo.cli import main
from avemo.contract.options import UsageError
from avemo.training.search import launcher, report
from avemo.training.search import worker as search_worker
from avemo.training.search.space import build_space

MOSEI = ["--dataset", "mosei", "--data_root", "mosei.pkl", "--modalities", "atv"]


def _fixed(tmp_path, mode: str, argv: list[str], params=None):
    req = launcher.SearchRequest(mode, build_space(mode, params), argv)
    return launcher.fixed_train_argv(req, tmp_path, search_worker.train_parser())


def _value(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, (flag, argv)
    return argv[argv.index(flag) + 1]


def _teacher_configs(tmp_path, monkeypatch, argv: list[str], mode: str = "quick") -> dict:
    """{modality: TrainConfig} the search would train its teachers with (training replaced by a stub)."""
    from avemo.training.train import compare
    from avemo.training.train.config import check_config

    seen = {}

    def fake_train(cfg, log=print, tag=None, retrain=False):
        check_config(cfg)  # what train() checks first: the teacher would train
        seen[cfg.modalities] = cfg
        return {"best_val_loss": 1.0, "test": {"regression": {"Corr": 0.5, "MAE": 0.7}}}, False

    monkeypatch.setattr(compare, "train_or_reuse", fake_train)
    req = launcher.SearchRequest(mode, build_space(mode), argv, progress=False)
    parser = search_worker.train_parser()
    fixed, which = launcher.fixed_train_argv(req, tmp_path, parser)
    launcher.train_teachers(req, tmp_path, fixed, which, parser)
    return seen


# --------------------------------------------------------------------------------- fixed flags, teachers
def test_feature_search_adds_seed_002_defaults_once_and_user_flags_win(tmp_path):
    argv, teachers = _fixed(tmp_path, "quick", MOSEI)
    assert argv[: len(MOSEI)] == MOSEI
    assert _value(argv, "--epochs") == "8" and _value(argv, "--early_stopping_patience") == "3"
    assert _value(argv, "--contrastive_proj_dim") == "64" and _value(argv, "--contrastive_pairs") == "text"
    assert teachers == ["audio", "video"]
    assert _value(argv, "--teacher_audio") == str((tmp_path / "teachers/audio/best.pt").resolve())
    assert _value(argv, "--teacher_video") == str((tmp_path / "teachers/video/best.pt").resolve())
    # every trial of the guide's grid is a valid seed-002 run: MSE, delta_va into the teachers, InfoNCE against text
    space = build_space("grid")
    cfg = search_worker.trial_config(search_worker.trial_argv(argv, space, space.points()[-1]))
    assert cfg.resolved_task == "regression" and cfg.losses["contrastive_pairs"] == "text"
    assert cfg.losses["distill"] == 1.0 and cfg.losses["contrastive"] == 0.2 and cfg.model.contrastive_proj_dim == 64

    mine = [*MOSEI, "--epochs", "3", "--contrastive_pairs", "all", "--contrastive_proj_dim", "32"]
    argv, _ = _fixed(tmp_path, "grid", mine)
    assert argv[: len(mine)] == mine and _value(argv, "--epochs") == "3"
    assert _value(argv, "--contrastive_pairs") == "all" and _value(argv, "--contrastive_proj_dim") == "32"
    # the preset names the dataset, modalities and contrastive pairs: nothing is added twice
    argv, teachers = _fixed(tmp_path, "quick", ["--preset", "mosei_tva", "--data_root", "mosei.pkl"])
    assert "--contrastive_pairs" not in argv and teachers == ["audio", "video"]
    # no text read: nothing to pair against text; no video read: no video teacher
    argv, teachers = _fixed(tmp_path, "quick", ["--dataset", "mosei", "--modalities", "av"])
    assert "--contrastive_pairs" not in argv and teachers == ["audio", "video"]
    argv, teachers = _fixed(tmp_path, "custom", ["--dataset", "mosei", "--modalities", "at"], ["delta_va=0.1,0.3"])
    assert teachers == ["audio"] and "--teacher_video" not in argv
    assert "--contrastive_pairs" not in argv and "--contrastive_proj_dim" not in argv  # delta_nce not searched
    # clips keep their own InfoNCE default (all pairs)
    argv, _ = _fixed(tmp_path, "quick", [])
    assert "--contrastive_pairs" not in argv and _value(argv, "--contrastive_proj_dim") == "64"


def test_feature_teachers_are_unimodal_feature_models(tmp_path, monkeypatch):
    seen = _teacher_configs(tmp_path, monkeypatch, [*MOSEI, "--feature_encoder", "mlp", "--lr", "0.001"])
    assert set(seen) == {"a", "v"}
    for letter, m in (("a", "audio"), ("v", "video")):
        cfg = seen[letter]
        assert cfg.dataset == "mosei" and cfg.data_root == "mosei.pkl" and cfg.resolved_task == "regression"
        assert cfg.out_dir == str(tmp_path / "teachers" / m) and cfg.lr == 0.001 and cfg.epochs == 8
        assert cfg.model.feature_encoder == "mlp" and cfg.model.contrastive_proj_dim == 0
        assert cfg.losses["distill"] == 0.0 and cfg.losses["contrastive"] == 0.0 and cfg.teachers() == {}
    # the preset of seed 002 sets delta_va: its teachers still distil nothing (and need no teacher)
    seen = _teacher_configs(tmp_path, monkeypatch, ["--preset", "mosei_tva", "--data_root", "mosei.pkl"])
    assert {k: (c.dataset, c.losses["distill"], c.model.contrastive_proj_dim) for k, c in seen.items()} == {
        "a": ("mosei", 0.0, 0),
        "v": ("mosei", 0.0, 0),
    }


def test_a_regression_search_refuses_the_macro_f1_objective(tmp_path):
    req = launcher.SearchRequest("quick", build_space("quick"), MOSEI, objective="val_macro_f1", folder=tmp_path / "s")
    with pytest.raises(UsageError, match="has no macro-F1"):
        launcher.run_search(req)
    assert not (tmp_path / "s").exists()  # refused before anything is written


# --------------------------------------------------------------------------------- summary and report
def _metrics(history: list[dict]) -> dict:
    return {
        "epochs_run": len(history),
        "best_val_loss": min(h["val_loss"] for h in history),
        "config": {"model": {"modalities": ["text", "audio", "video"]}},
        "test": {"regression": {"Corr": 0.61, "MAE": 0.72, "MSE": 0.83, "Non0_acc_2": 0.74, "Mult_acc_7": 0.35}},
        "history": history,
    }


def _epoch(epoch: int, loss: float, corr: float) -> dict:
    return {
        "epoch": epoch, "val_loss": loss, "val_mae": loss / 2, "val_corr": corr, "val_Non0_acc_2": corr + 0.1,
        "val_Mult_acc_7": corr / 2, "val_weight_text": 0.5, "val_weight_audio": 0.2 + epoch / 100,
        "val_weight_video": 0.3 - epoch / 100,
    }  # fmt: skip


def test_regression_summary_takes_the_best_validation_epoch_and_the_test_figures():
    s = search_worker.summarise_run(_metrics([_epoch(1, 0.9, 0.1), _epoch(2, 0.7, 0.4), _epoch(3, 0.8, 0.5)]), 8)
    assert s["task"] == "regression" and s["best_val_loss"] == 0.7 and s["best_epoch"] == 2
    assert (s["val_corr"], s["val_mae"], s["val_mse"], s["val_acc2"], s["val_acc7"]) == (0.4, 0.35, 0.7, 0.5, 0.2)
    test = (s["test_corr"], s["test_mae"], s["test_mse"], s["test_acc2"], s["test_acc7"])
    assert test == (0.61, 0.72, 0.83, 0.74, 0.35)  # the best checkpoint's test split: Acc-2 = Non0_acc_2
    assert s["modality_weights"] == pytest.approx({"text": 0.5, "audio": 0.22, "video": 0.28})
    assert s["stopped_early"]  # 3 of 8 epochs
    assert math.isnan(s["val_macro_f1"])


def _row(number: int, value: float, task: str = "regression", **more) -> dict:
    return {
        "number": number, "state": "COMPLETE", "label": f"delta_va={number / 10}", "value": value,
        "flags": {"delta_va": number / 10}, "task": task, "best_val_loss": value, "val_macro_f1": None,
        "test_macro_f1": None, "epochs_run": 8, "stopped_early": False, "seconds": 1.0, "duplicate_of": None,
        "modality_weights": {"text": 0.5, "audio": 0.25, "video": 0.25}, "run_dir": "r",
        "train_argv": ["--delta_va", str(number / 10)],
        **{f"{s}_{k}": 0.5 for s in ("val", "test") for k in ("corr", "mae", "mse", "acc2", "acc7")}, **more,
    }  # fmt: skip


def test_regression_table_shows_the_fields_figures_and_every_modality_weight(tmp_path):
    rows = [_row(1, 0.9), _row(2, 0.7), _row(3, 0.8)]
    table = report.markdown(rows, "val_loss", "t")
    header = next(line for line in table.splitlines() if line.startswith("| rank"))
    for col in (
        "val MSE",
        "test Corr",
        "test MAE",
        "test Acc-2",
        "test Acc-7",
        "val Corr",
        "weights text / audio / video",
    ):
        assert f"| {col} |" in header, col
    body = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [line.split(" | ")[1] for line in body] == ["2", "3", "1"]  # ranked by val MSE, ascending
    assert all("0.50 / 0.25 / 0.25" in line for line in body)
    assert "best validation MSE" in report.best_config_text(rows[1], "val_loss", "quick", 3)
    # one varied parameter: the heatmap is a strip
    assert report.heatmap_axes(rows) == ("delta_va", None)
    assert report.plot_heatmap(rows, "val_loss", tmp_path / "h.png", "t")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    # conversations keep macro-F1 and show weighted F1; an older row's [audio, video] weights still read
    conv = [
        _row(1, 1.2, "classification", val_macro_f1=0.4, test_macro_f1=0.38, val_weighted_f1=0.5, test_weighted_f1=0.47)
    ]
    conv[0]["modality_weights"] = [0.4, 0.6]
    table = report.markdown(conv, "val_loss", "t")
    assert "| test macro-F1 |" in table and "| test weighted-F1 |" in table and "| test Corr |" not in table
    assert "0.470" in table and "weights audio / video" in table and "0.40 / 0.60" in table


# ---------------------------------------------------------------------------------------- the real CLI
def test_a_feature_search_through_the_cli(mosei_file, tmp_path, capsys):
    folder = tmp_path / "search"
    argv = [
        "search", "custom", "--param", "delta_va=0.1,0.3", "--dataset", "mosei", "--data_root", str(mosei_file),
        "--modalities", "atv", "--epochs", "1", "--tiny", "--cache_dir", str(tmp_path / "cache"),
        "--dir", str(folder), "--json", "--no_progress", "--heartbeat", "2",
    ]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["task"] == "regression" and doc["finished"] == 2 == doc["points"]
    # the teachers: trained once each, unimodal feature models, named by every trial
    for m in ("audio", "video"):
        assert (folder / "teachers" / m / "best.pt").is_file()
        assert err.count(f"[search] teacher {m}: training once") == 1
        ran = json.loads((folder / "teachers" / m / "metrics.json").read_text())
        assert ran["config"]["modalities"] == m[0] and ran["config"]["model"]["modalities"] == [m]
        assert ran["config"]["dataset"] == "mosei" and ran["config"]["model"]["contrastive_proj_dim"] == 0
        assert ran["config"]["losses"]["distill"] == 0.0 and "regression" in ran["test"]
    complete = [t for t in doc["trials"] if t["state"] == "COMPLETE"]
    assert len(complete) == 2
    for t in complete:
        assert _value(t["train_argv"], "--teacher_audio") == str((folder / "teachers/audio/best.pt").resolve())
        assert _value(t["train_argv"], "--teacher_video") == str((folder / "teachers/video/best.pt").resolve())
        ran = json.loads((Path(t["run_dir"]) / "metrics.json").read_text())
        assert t["value"] == t["best_val_loss"] == ran["best_val_loss"]  # the objective: best validation MSE
        assert t["test_corr"] == ran["test"]["regression"]["Corr"]
        assert t["test_acc2"] == ran["test"]["regression"]["Non0_acc_2"]
        assert t["test_acc7"] == ran["test"]["regression"]["Mult_acc_7"]
        assert set(t["modality_weights"]) == {"text", "audio", "video"}
    # ranked by best validation MSE, ascending
    assert doc["best"]["value"] == min(t["value"] for t in complete)
    table = (folder / "results.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| rank"))
    for col in ("val MSE", "test Corr", "test MAE", "test Acc-2", "test Acc-7", "weights text / audio / video"):
        assert f"| {col} |" in header, col
    body = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    mse = header.split(" | ").index("val MSE")
    assert [float(cells[mse]) for cells in body] == sorted(float(cells[mse]) for cells in body)
    assert len(body) == 2 and all(cells[-2].count(" / ") == 2 for cells in body)  # three modality weights
    assert (folder / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # best_config.txt reproduces the best trial: its command line parses to that run's configuration
    from avemo.training.train.compare import comparable

    command = [ln for ln in (folder / "best_config.txt").read_text().splitlines() if ln.startswith("avemo train")]
    cfg = search_worker.trial_config(shlex.split(command[0])[2:])
    best = doc["best"]
    ran = json.loads((Path(best["run_dir"]) / "metrics.json").read_text())["config"]
    assert comparable(cfg.to_dict() | {"out_dir": "", "progress": False}) == comparable(ran)
    assert cfg.dataset == "mosei" and cfg.losses["distill"] == best["flags"]["delta_va"]
