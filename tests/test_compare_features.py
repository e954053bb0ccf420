"""`avemo compare` on feature and conversation files: mean ± std over seeds (MOSEI layout) and over folds of whole
IEMOCAP sessions / MELD dialogues, the missing-modality rows, reuse of finished runs, and the usage errors."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from avemo.cli import build_parser, main
from avemo.contract.options import UsageError
from avemo.training.cli import compare_config_from_args, train_config_from_args
from avemo.training.data.dialogue_dataset import prepare_dialogues
from avemo.training.data.dialogues import check_no_leak, fold_group, read_dialogues
from avemo.training.data.safe_pickle import FeatureFileError
from avemo.training.synthetic.dialogues import write_dialogue_file

DIMS = {"text": 6, "audio": 5, "video": 4}
QUIET = ["--epochs", "1", "--tiny", "--no_progress", "--no-tensorboard", "--json"]


@pytest.fixture(scope="module")
def iemocap_file(tmp_path_factory):  # 16 dialogues over the 5 sessions
    path = tmp_path_factory.mktemp("dlg") / "iemocap.pkl"
    return write_dialogue_file(path, layout="iemocap", dialogues=(12, 4), utterances=(4, 9), dims=DIMS, seed=0)


@pytest.fixture(scope="module")
def meld_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dlg") / "meld.pkl"
    return write_dialogue_file(path, layout="meld", dialogues=(16, 5), utterances=(3, 6), dims=DIMS, seed=0)


def _pm(values) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


# ---------------------------------------------------------------- seeds on a MOSEI-layout file
def test_compare_seeds_gives_mean_std_of_the_runs_and_trains_only_a_new_seed(tmp_path, mosei_file, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--dataset", "mosei", "--data_root", str(mosei_file), "--cache_dir", str(tmp_path / "cache")]
    argv += ["--out", str(out), "--fusions", "gated,text", *QUIET]
    assert main([*argv, "--seeds", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["seeds"] == [0, 1] and [(r["seed"], r["fusion"], r["reused"]) for r in doc["rows"]] == [
        (0, "gated", False),
        (0, "text", False),
        (1, "gated", False),
        (1, "text", False),
    ]
    folders = {"gated": [out / "gated", out / "seed-1" / "gated"], "text": [out / "text", out / "seed-1" / "text"]}
    runs = {f: [json.loads((d / "metrics.json").read_text()) for d in ds] for f, ds in folders.items()}
    assert [m["config"]["seed"] for m in runs["gated"]] == [0, 1]
    # the text baseline is the run of --modalities t; the gated model reads all three
    text_cfg = runs["text"][0]["config"]
    assert text_cfg["modalities"] == "t" and text_cfg["model"]["modalities"] == ["text"]
    assert runs["gated"][0]["config"]["model"]["modalities"] == ["text", "audio", "video"]
    # mean ± std (population) over the two seeds of what each run's metrics.json measured
    md = (out / "comparison.md").read_text()
    for fusion, letters in (("gated", "tav"), ("text", "t")):
        got = doc["summary"]["fusions"][fusion]
        cells = []
        for key in ("Corr", "MAE", "Non0_acc_2", "Mult_acc_7"):
            values = [m["test"]["regression"][key] for m in runs[fusion]]
            assert got[key] == pytest.approx({"mean": np.mean(values), "std": np.std(values), "n": 2})
            cells.append(_pm(values))
        assert f"| {fusion} | {letters} | {' | '.join(cells)} | 2 |" in md
    assert "| model | modalities | test Corr | test MAE | test Acc-2 (non-zero) | test Acc-7 | runs |" in md
    # missing-modality rows of the tri-modal model; its "full" evaluation is what training measured
    rows = {r["condition"]: r for r in doc["summary"]["missing_modality"]}
    assert list(rows) == ["no_text", "no_audio", "no_video"] and {r["fusion"] for r in rows.values()} == {"gated"}
    assert "| gated, text dropped |" in md and "Δ Corr (dropped - every modality)" in md
    records = {(r["seed"], r["condition"]): r for r in doc["records"]}
    assert {r["fusion"] for r in doc["records"]} == {"gated"} and len(records) == 2 * 4
    for seed, m in enumerate(runs["gated"]):
        assert records[(seed, "full")]["metrics"]["Corr"] == pytest.approx(m["test"]["regression"]["Corr"])
        assert records[(seed, "no_text")]["modality_weights"][0] == pytest.approx(0.0)
    drops = [records[(s, "no_audio")]["metrics"]["Corr"] - records[(s, "full")]["metrics"]["Corr"] for s in (0, 1)]
    assert rows["no_audio"]["change"]["Corr"]["mean"] == pytest.approx(np.mean(drops))

    # a third seed: the four finished runs are reused, only seed 2 trains
    stamp = (out / "gated" / "best.pt").stat().st_mtime_ns
    assert main([*argv, "--seeds", "3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["seed"], r["reused"]) for r in doc["rows"]] == [(s, s < 2) for s in (0, 0, 1, 1, 2, 2)]
    assert (out / "gated" / "best.pt").stat().st_mtime_ns == stamp
    assert (out / "seed-2" / "text" / "metrics.json").is_file()
    assert doc["summary"]["fusions"]["gated"]["runs"] == 3 and doc["summary"]["fusions"]["text"]["Corr"]["n"] == 3


# ---------------------------------------------------------------- folds of whole sessions / dialogues
def test_iemocap_folds_test_whole_sessions_and_every_dialogue_once(iemocap_file):
    plain = read_dialogues(iemocap_file, "iemocap")  # the file's own split is unchanged
    every = sorted(d.id for split in plain.splits.values() for d in split)
    by_session = Counter(fold_group("iemocap", d) for d in every)
    assert len(by_session) == 5 and not plain.fold
    for folds in (2, 5):
        tested = []
        for fold in range(folds):
            corpus = read_dialogues(iemocap_file, "iemocap", folds=folds, fold=fold)
            ids = {name: [d.id for d in split] for name, split in corpus.splits.items()}
            assert sorted(i for v in ids.values() for i in v) == every  # no dialogue twice, none lost
            sessions = {name: {fold_group("iemocap", d) for d in v} for name, v in ids.items()}
            assert not sessions["test"] & (sessions["train"] | sessions["valid"])
            assert sum(by_session[s] for s in sessions["test"]) == len(ids["test"])  # whole sessions
            assert corpus.fold["test_groups"] == sorted(sessions["test"]) and corpus.fold["group"] == "session"
            assert len(ids["valid"]) == max(1, int(0.1 * (len(ids["train"]) + len(ids["valid"])) + 0.5))
            tested += ids["test"]
        assert sorted(tested) == every  # every dialogue tested exactly once
    assert read_dialogues(iemocap_file, "iemocap", folds=5, fold=2).fold["test_groups"] == ["Ses03"]
    with pytest.raises(FeatureFileError, match="6 folds need at least 6 sessions; the file has 5"):
        read_dialogues(iemocap_file, "iemocap", folds=6, fold=0)
    with pytest.raises(ValueError, match="session Ses01 is in the test split"):
        check_no_leak({"train": ["Ses01M_impro01"], "valid": [], "test": ["Ses01F_impro01"]}, "iemocap")
    with pytest.raises(ValueError, match="dialogue 'Ses02F_impro01' is in both the train and the test split"):
        check_no_leak({"train": ["Ses02F_impro01"], "valid": [], "test": ["Ses02F_impro01"]}, "iemocap")


def test_meld_folds_are_dialogue_level(meld_file):
    every = sorted(d.id for split in read_dialogues(meld_file, "meld").splits.values() for d in split)
    tested = []
    for fold in range(3):
        datasets, info = prepare_dialogues(meld_file, "meld", folds=3, fold=fold)
        ids = {name: [d.id for d in ds.dialogues] for name, ds in datasets.items()}
        assert sorted(i for v in ids.values() for i in v) == every
        assert info["folds"]["group"] == "dialogue" and sorted(ids["test"]) == info["folds"]["test_groups"]
        assert len(ids["test"]) in (7, 8) and info["dialogues"]["test"] == len(ids["test"])  # 21 dialogues / 3
        tested += ids["test"]
    assert sorted(tested) == every


def test_compare_on_iemocap_session_folds(tmp_path, iemocap_file, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--dataset", "iemocap", "--data_root", str(iemocap_file), "--out", str(out)]
    assert main([*argv, "--folds", "2", "--fusions", "gated", *QUIET]) == 0
    doc = json.loads(capsys.readouterr().out)
    runs = [json.loads((out / f"fold-{k}" / "gated" / "metrics.json").read_text()) for k in range(2)]
    assert [(r["config"]["split_mode"], r["config"]["folds"], r["config"]["fold"]) for r in runs] == [
        ("kfold", 2, 0),
        ("kfold", 2, 1),
    ]
    assert sorted(s for r in runs for s in r["folds"]["test_groups"]) == ["Ses01", "Ses02", "Ses03", "Ses04", "Ses05"]
    values = {key: [r["test"]["clip"][key] for r in runs] for key in ("weighted_f1", "accuracy", "macro_f1")}
    md = (out / "comparison.md").read_text()
    assert f"| gated | tav | {' | '.join(_pm(v) for v in values.values())} | 2 |" in md
    assert "2 folds of whole sessions" in md and "| gated, video dropped |" in md
    assert doc["summary"]["fusions"]["gated"]["weighted_f1"]["mean"] == pytest.approx(np.mean(values["weighted_f1"]))
    full = [r for r in doc["records"] if r["condition"] == "full"]
    assert [r["metrics"]["weighted_f1"] for r in full] == pytest.approx(values["weighted_f1"])
    # `avemo evaluate` on a fold's checkpoint scores that fold's test sessions, as the trainer did
    ckpt = out / "fold-1" / "gated" / "best.pt"
    assert main(["evaluate", str(ckpt), "--dataset", "iemocap", "--data_root", str(iemocap_file), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["clip"]["n"] == runs[1]["test"]["clip"]["n"]
    assert ev["clip"]["weighted_f1"] == pytest.approx(runs[1]["test"]["clip"]["weighted_f1"])


# ---------------------------------------------------------------- usage errors (no training)
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dataset", "mosei", "--seeds", "0"], "--seeds must be at least 1 (got 0)"),
        (["--dataset", "mosei", "--folds", "2"], "--dataset mosei keeps its file's train / valid / test split"),
        (["--seeds", "2"], "--seeds applies to feature and conversation datasets"),
        (["--dataset", "mosei", "--fresh_corpora", "1"], "--fresh_corpora applies to clips"),
        (["--dataset", "sims", "--unseen_eval"], "--unseen_eval applies to clips"),
        (["--fusions", "text,gated"], "unknown fusion(s) ['text'] for --dataset ravdess"),
        (["--dataset", "mosei", "--fusions", "joyful"], "unknown fusion(s) ['joyful'] for --dataset mosei"),
        (["--dataset", "mosei", "--fusions", "video,gated", "--modalities", "at"], "video is not among --modalities"),
        (["--dataset", "mosei", "--fusions", "gated", "--modalities", "t"], "needs two or more modalities"),
        (["--dataset", "iemocap", "--folds", "2", "--split_mode", "kfold"], "--split_mode does not apply"),
    ],
)
def test_compare_usage_errors(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        main(["compare", "--out", str(tmp_path / "cmp"), *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()


def test_compare_defaults_and_train_reads_conversation_folds():
    def parse(*argv):
        return build_parser(argv[0]).parse_args(list(argv))

    cfg = compare_config_from_args(parse("compare", "--dataset", "iemocap", "--folds", "5"), ["gated", "text"])
    assert cfg.num_classes == 6 and cfg.split_mode == "actor"  # compare sets the folds per run
    # one fold of a comparison is an `avemo train` command line
    cfg = train_config_from_args(parse("train", "--dataset", "iemocap", "--split_mode", "kfold", "--fold", "2"))
    assert (cfg.split_mode, cfg.folds, cfg.fold) == ("kfold", 5, 2)
    with pytest.raises(UsageError, match="to conversation datasets as kfold only"):
        train_config_from_args(parse("train", "--dataset", "meld", "--split_mode", "stratified"))
    with pytest.raises(UsageError, match="--split_mode applies to clips"):
        train_config_from_args(parse("train", "--dataset", "mosei", "--split_mode", "kfold"))
