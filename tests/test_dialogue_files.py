"""IEMOCAP / MELD dialogue feature files: the synthetic writer's layout, the validating reader, the CLI.

Tiny files (8 + 3 dialogues, dims 6 / 5 / 4) for the layout and every refusal; one default-size IEMOCAP file
for the calibration of the planted context signal (utterance-only vs utterance + same-speaker mean).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from avemo.cli import main
from avemo.training.data.dialogues import (
    CLASS_NAMES,
    DIALOGUE_DATASETS,
    LAYOUTS,
    DialogueCorpus,
    check_modalities,
    read_dialogues,
)
from avemo.training.data.safe_pickle import FeatureFileError
from avemo.training.synthetic.dialogues import MELD_SENTIMENT, write_dialogue_file

TINY_DIMS = {"text": 6, "audio": 5, "video": 4}


def tiny(tmp_path: Path, layout: str = "iemocap", visual: bool = True, name: str = "tiny.pkl") -> Path:
    return write_dialogue_file(
        tmp_path / name, layout, visual=visual, dialogues=(8, 3), utterances=(3, 6), dims=TINY_DIMS, seed=3
    )


def raw(path: Path) -> tuple:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def dump(data, path: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump(tuple(data), f, protocol=2)
    return path


def named(data: tuple, layout: str) -> dict:
    """The tuple's entries by their public names."""
    names: tuple[str, ...]
    if layout == "iemocap":
        names = ("ids", "speakers", "labels", "text", "audio", "video", "sentences", "train", "test")
    elif len(data) == 10:
        names = ("ids", "speakers", "labels", "text", "audio", "video", "sentences", "train", "test", "sentiment")
    else:
        names = ("ids", "speakers", "labels", "text", "audio", "sentences", "train", "test", "sentiment")
    return dict(zip(names, data, strict=True))


def check_splits(corpus: DialogueCorpus, src: dict, kept: set[str]) -> None:
    """Disjoint splits covering every kept dialogue, test = testVid, valid = 10 % of trainVid (>= 1), sorted ids."""
    ids = {s: [d.id for d in corpus.splits[s]] for s in ("train", "valid", "test")}
    assert all(v == sorted(v) for v in ids.values())
    assert not (set(ids["train"]) & set(ids["valid"])) and not (set(ids["train"] + ids["valid"]) & set(ids["test"]))
    assert set(ids["train"] + ids["valid"] + ids["test"]) == kept
    assert set(ids["test"]) == {str(d) for d in src["test"]} & kept
    train = {str(d) for d in src["train"]} & kept
    assert set(ids["train"] + ids["valid"]) == train
    assert len(ids["valid"]) == max(1, round(0.1 * len(train)))


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dataset", ["iemocap", "iemocap_4"])
def test_iemocap_round_trip(tmp_path, dataset):
    path = tiny(tmp_path)
    src = named(raw(path), "iemocap")
    corpus = read_dialogues(path, dataset)
    assert (corpus.name, corpus.path, corpus.num_speakers) == (dataset, path, 2)
    assert corpus.dims == TINY_DIMS and corpus.class_names == CLASS_NAMES[dataset]
    classes = len(CLASS_NAMES[dataset])
    kept = {d for d in src["ids"] if any(y < classes for y in src["labels"][d])}
    check_splits(corpus, src, kept)
    for d in (d for split in corpus.splits.values() for d in split):
        keep = [i for i, y in enumerate(src["labels"][d.id]) if y < classes]
        assert len(d) == len(keep) > 0
        for m in TINY_DIMS:
            want = np.stack(src[m][d.id])
            assert d.features[m].dtype == np.float32 and d.features[m].flags.c_contiguous
            assert np.array_equal(d.features[m], want[keep])
        assert d.labels.dtype == np.int64 and d.labels.tolist() == [src["labels"][d.id][i] for i in keep]
        assert d.speakers.tolist() == [{"M": 0, "F": 1}[src["speakers"][d.id][i]] for i in keep]
        assert d.utterance_ids == [src["ids"][d.id][i] for i in keep]
        assert d.sentences == [src["sentences"][d.id][i] for i in keep]
        for uid, who in zip(d.utterance_ids, d.speakers, strict=True):
            assert uid.startswith(f"{d.id}_{'MF'[who]}") and len(uid) == len(d.id) + 5
    if dataset == "iemocap_4":
        assert sum(map(len, corpus.splits["train"])) < sum(sum(1 for _ in src["labels"][d]) for d in src["train"])


@pytest.mark.parametrize("visual", [True, False], ids=["10-tuple", "9-tuple"])
@pytest.mark.parametrize("dataset", ["meld", "meld_sentiment"])
def test_meld_round_trip(tmp_path, dataset, visual):
    path = tiny(tmp_path, "meld", visual=visual)
    data = raw(path)
    assert len(data) == (10 if visual else 9)
    src = named(data, "meld")
    corpus = read_dialogues(path, dataset)
    want_dims = TINY_DIMS if visual else {"text": 6, "audio": 5}
    assert corpus.dims == want_dims and corpus.num_speakers == 9 and corpus.class_names == CLASS_NAMES[dataset]
    check_splits(corpus, src, {str(d) for d in src["ids"]})
    for d in (d for split in corpus.splits.values() for d in split):
        key = int(d.id)
        assert set(d.features) == set(want_dims)
        for m in want_dims:
            assert np.array_equal(d.features[m], np.stack(src[m][key]))
        labels = src["sentiment" if dataset == "meld_sentiment" else "labels"][key]
        assert d.labels.tolist() == labels
        assert src["sentiment"][key] == [MELD_SENTIMENT[y] for y in src["labels"][key]]
        assert d.speakers.tolist() == [int(np.argmax(s)) for s in src["speakers"][key]]
        assert len(set(d.speakers.tolist())) <= 4  # 2-4 speakers per MELD dialogue (a short one may hear fewer)
        assert d.utterance_ids == [f"{key}_{k}" for k in range(len(d))] == src["ids"][key]
    if visual:
        check_modalities(corpus, ("text", "audio", "video"))
    else:
        check_modalities(corpus, ("text", "audio"))
        with pytest.raises(FeatureFileError, match="the MELD file has no visual features .*use --modalities ta"):
            check_modalities(corpus, ("text", "video"))


def test_the_file_is_the_public_protocol_2_tuple(tmp_path):
    path = tiny(tmp_path)
    assert path.read_bytes()[:2] == b"\x80\x02"  # PROTO 2: what Python 2 wrote
    data = raw(path)
    assert type(data) is tuple and len(data) == 9
    assert all(type(e) is dict for e in data[:7]) and type(data[7]) is set and type(data[8]) is set
    ids = list(data[0])
    assert all(isinstance(d, str) and d.startswith("Ses") for d in ids)
    assert data[7] | data[8] == set(ids) and not data[7] & data[8] and (len(data[7]), len(data[8])) == (8, 3)
    d = ids[0]
    assert set(data[1][d]) <= {"M", "F"} and all(isinstance(y, int) for y in data[2][d])
    for entry, dim in zip(data[3:6], (6, 5, 4), strict=True):
        assert isinstance(entry[d], list)
        assert all(isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape == (dim,) for x in entry[d])
    assert all(isinstance(s, str) for s in data[6][d])
    meld = raw(tiny(tmp_path, "meld", visual=False, name="meld.pkl"))
    assert len(meld) == 9 and all(isinstance(k, int) for k in meld[0])
    assert all(len(s) == 9 and sum(s) == 1 for s in meld[1][0]) and type(meld[6]) is set


def test_python2_bytes_and_2d_arrays_are_accepted(tmp_path):
    data = list(raw(tiny(tmp_path)))
    b = str.encode  # a Python-2 str read as bytes
    data[0] = {b(d, "latin1"): [b(u, "latin1") for u in v] for d, v in data[0].items()}
    data[1] = {b(d, "latin1"): [b(s, "latin1") for s in v] for d, v in data[1].items()}
    data[6] = {d: [b(s + " caf\xe9", "latin1") for s in v] for d, v in data[6].items()}
    data[3] = {d: np.stack(v).astype(np.float64) for d, v in data[3].items()}  # [n, D] instead of a list
    corpus = read_dialogues(dump(data, tmp_path / "py2.pkl"), "iemocap")
    d = corpus.splits["test"][0]
    assert d.utterance_ids[0].startswith(d.id) and d.sentences[0].endswith(" caf\xe9")
    assert d.features["text"].dtype == np.float32 and corpus.dims["text"] == 6


def test_dataset_names_and_layouts():
    assert DIALOGUE_DATASETS == ("iemocap", "iemocap_4", "meld", "meld_sentiment")
    assert LAYOUTS == {"iemocap": "iemocap", "iemocap_4": "iemocap", "meld": "meld", "meld_sentiment": "meld"}
    assert CLASS_NAMES["iemocap_4"] == CLASS_NAMES["iemocap"][:4] and len(CLASS_NAMES["meld"]) == 7
    with pytest.raises(ValueError, match="visual=False is for MELD"):
        write_dialogue_file("unused.pkl", "iemocap", visual=False)


# ------------------------------------------------------------------------------------------------ bad files


def _first(data: list) -> str:
    return sorted(data[0])[0]


def _wrong_length(data, tmp_path):
    return data[:8], r"the top level is a 8-tuple; an IEMOCAP file is a 9-tuple \(videoIDs, videoSpeakers, videoLabels"


def _keys_disagree(data, tmp_path):
    gone = _first(data)
    del data[3][gone]
    return data, rf"videoText lacks dialogue '{gone}' that videoIDs has \(1 missing\)"


def _lengths_differ(data, tmp_path):
    d = _first(data)
    n = len(data[0][d])
    data[2][d] = data[2][d][:-1]
    return (
        data,
        rf"dialogue '{d}': lengths differ \(videoIDs {n}, videoSpeakers {n}, videoLabels {n - 1}, videoText {n}",
    )


def _dims_differ(data, tmp_path):
    d = _first(data)
    data[4][d][2] = data[4][d][2][:4]
    return data, rf"dialogue '{d}', videoAudio, utterance 2: 4 features, utterance 0 has 5"


def _dims_differ_between_dialogues(data, tmp_path):
    d = sorted(data[0])[1]
    data[5][d] = [np.zeros(7, np.float32) for _ in data[5][d]]
    return data, rf"dialogue '{d}', videoVisual: 7 features per utterance, dialogue '{_first(data)}' has 4"


def _nan(data, tmp_path):
    d = _first(data)
    data[3][d][1] = data[3][d][1].copy()
    data[3][d][1][0] = np.nan
    return data, rf"dialogue '{d}', videoText, utterance 1: holds NaN; expected finite features"


def _label_out_of_range(data, tmp_path):
    d = _first(data)
    data[2][d][0] = 6
    return data, rf"dialogue '{d}', videoLabels, utterance 0: label 6; expected whole numbers in \[0, 5\] \(0 hap"


def _in_both_splits(data, tmp_path):
    d = sorted(data[7])[0]
    data[8] = data[8] | {d}
    return data, rf"dialogue '{d}' is in both trainVid and testVid"


def _unknown_split_id(data, tmp_path):
    data[8] = data[8] | {"Ses09M_nowhere"}
    return data, r"testVid names dialogue 'Ses09M_nowhere', which videoIDs lacks"


def _bad_speaker(data, tmp_path):
    d = _first(data)
    data[1][d][0] = "X"
    return data, rf"dialogue '{d}', videoSpeakers, utterance 0: speaker 'X'; expected 'M' or 'F'"


def _not_a_dict(data, tmp_path):
    data[4] = list(data[4].values())
    return data, r"entry 4 \(videoAudio\) is a list, expected a dict keyed by dialogue id"


def _not_a_tuple(data, tmp_path):
    return {"videoIDs": data[0]}, r"the top level is a dict; an IEMOCAP file is a 9-tuple"


class _Payload:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _runs_code(data, tmp_path):
    data[6][_first(data)] = _Payload(os.system, (f"touch {tmp_path / 'pwned'}",))  # deep inside a valid file
    return data, r"refuses to load (posix|os)\.system: a feature file may hold only"


BAD = [
    _wrong_length,
    _keys_disagree,
    _lengths_differ,
    _dims_differ,
    _dims_differ_between_dialogues,
    _nan,
    _label_out_of_range,
    _in_both_splits,
    _unknown_split_id,
    _bad_speaker,
    _not_a_dict,
    _not_a_tuple,
    _runs_code,
]


@pytest.mark.parametrize("spoil", BAD, ids=[f.__name__.strip("_") for f in BAD])
def test_bad_iemocap_file_is_refused_in_one_line(tmp_path, spoil):
    data, message = spoil(list(raw(tiny(tmp_path))), tmp_path)
    path = tmp_path / "bad.pkl"
    with open(path, "wb") as f:
        pickle.dump(data if isinstance(data, dict) else tuple(data), f, protocol=2)
    with pytest.raises(FeatureFileError, match=message) as err:
        read_dialogues(path, "iemocap")
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    assert not (tmp_path / "pwned").exists()


def test_bad_meld_file_is_refused_in_one_line(tmp_path):
    data = list(raw(tiny(tmp_path, "meld")))
    with pytest.raises(FeatureFileError, match=r"a 8-tuple; a MELD file is DialogueRNN's 9-tuple without visual"):
        read_dialogues(dump(data[:8], tmp_path / "short.pkl"), "meld")
    data[1][0][0] = [0] * 9
    with pytest.raises(FeatureFileError, match=r"dialogue '0', videoSpeakers, utterance 0: speaker \[0, 0, 0"):
        read_dialogues(dump(data, tmp_path / "speaker.pkl"), "meld")
    data = list(raw(tiny(tmp_path, "meld")))
    data[9][0][0] = 3  # the sentiment labels are checked when the emotions are read, too
    with pytest.raises(FeatureFileError, match=r"videoLabelsSentiment, utterance 0: label 3; expected whole numbers"):
        read_dialogues(dump(data, tmp_path / "sentiment.pkl"), "meld")


# ------------------------------------------------------------------------------------------ calibration, CLI


def _calibration(path: Path) -> tuple[float, float]:
    """Weighted F1 on test of a logistic regression fitted on train + valid: utterance features only, and
    [utterance, mean of the same speaker's utterances over the whole dialogue] (the figures in the writer's
    docstring)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    corpus = read_dialogues(path, "iemocap")

    def xy(dialogues, context: bool):
        xs, ys = [], []
        for d in dialogues:
            x = np.concatenate([d.features[m] for m in ("text", "audio", "video")], axis=1)  # [n, D]
            if context:
                mean = np.zeros_like(x)
                for s in np.unique(d.speakers):
                    mean[d.speakers == s] = x[d.speakers == s].mean(axis=0)
                x = np.concatenate([x, mean], axis=1)  # [n, 2D]
            xs.append(x)
            ys.append(d.labels)
        return np.concatenate(xs), np.concatenate(ys)

    scores = []
    for context in (False, True):
        x, y = xy(corpus.splits["train"] + corpus.splits["valid"], context)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.001, max_iter=2000)).fit(x, y)
        x_test, y_test = xy(corpus.splits["test"], context)
        scores.append(float(f1_score(y_test, model.predict(x_test), average="weighted")))
    return scores[0], scores[1]


def test_dialogue_context_helps_on_the_default_iemocap_file(tmp_path):
    utterance, context = _calibration(write_dialogue_file(tmp_path / "iemocap.pkl", "iemocap"))
    assert 0.40 <= utterance <= 0.65, utterance
    assert context >= utterance + 0.10, (utterance, context)


def test_corpus_cli_writes_a_meld_file(tmp_path, capsys):
    out = tmp_path / "m.pkl"
    assert main(["corpus", "--format", "meld", "--no_visual", "--dialogues", "6", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "MELD 9-tuple, no visual: 6 train + 2 test dialogues" in printed and str(out) in printed
    corpus = read_dialogues(out, "meld")
    assert set(corpus.dims) == {"text", "audio"} and corpus.dims["text"] == 600 and corpus.num_speakers == 9
    assert [len(corpus.splits[s]) for s in ("train", "valid", "test")] == [5, 1, 2]
    assert len(raw(out)) == 9
    for argv, message in (
        (["--format", "iemocap", "--no_visual"], "--no_visual applies to --format meld only"),
        (["--format", "meld", "--samples", "1", "1", "1"], "--samples applies to --format mosi|mosei|sims only"),
        (["--format", "mosi", "--dialogues", "2", "1"], "--dialogues applies to --format iemocap|meld only"),
    ):
        with pytest.raises(SystemExit) as err:
            main(["corpus", *argv, "--out", str(tmp_path / "x.pkl")])
        assert err.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.pkl").exists()
