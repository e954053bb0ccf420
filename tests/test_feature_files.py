"""Feature files (MMSA's MOSI / MOSEI / SIMS pickles): the generator's layout, read_mmsa's validation,
the restricted unpickler against hostile pickles, the memory-mapped cache, the torch dataset and the
planted sentiment (three modalities explain more than two, two more than one).

Every file here is generated small (tens of samples) in tmp_path: the whole module runs in seconds.
"""

from __future__ import annotations

import itertools
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from avemo.training.data.feature_cache import open_features
from avemo.training.data.features import FeatureDataset, class_names, parse_modalities, targets
from avemo.training.data.mmsa import DATASETS, MODALITIES, MODALITY_KEYS, SPLITS, FeatureCorpus, check_dims, read_mmsa
from avemo.training.data.safe_pickle import FeatureFileError, safe_load
from avemo.training.synthetic.features import write_mmsa_file

SPEC_KEYS = set("text text_bert audio vision audio_lengths vision_lengths regression_labels".split())
SPEC_KEYS |= {"classification_labels", "annotations", "id", "raw_text"}
SIMS_EXTRA = {"regression_labels_T", "regression_labels_A", "regression_labels_V"}
TINY = (40, 10, 10)


def tiny(tmp_path: Path, dataset: str = "mosei", aligned: bool = False, seed: int = 0, **kw) -> Path:
    name = f"{dataset}_{'al' if aligned else 'un'}_{seed}.pkl"
    return write_mmsa_file(tmp_path / name, dataset, aligned=aligned, samples=TINY, seed=seed, **kw)


def raw(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f)  # our own generated file: trusted


def dump(obj: object, path: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)
    return path


# ---------------------------------------------------------------------------------- generator -> reader


@pytest.mark.parametrize("aligned", [False, True], ids=["unaligned", "aligned"])
@pytest.mark.parametrize("dataset", ["mosi", "mosei", "sims"])
def test_generated_file_round_trips_through_read_mmsa(tmp_path, dataset, aligned):
    path = tiny(tmp_path, dataset, aligned)
    data = raw(path)
    spec = DATASETS[dataset]
    keys = SPEC_KEYS - ({"audio_lengths", "vision_lengths"} if aligned else set())
    keys |= SIMS_EXTRA if dataset == "sims" else set()
    assert set(data) == set(SPLITS) and all(set(data[s]) == keys for s in SPLITS)
    assert isinstance(data["train"]["id"], list) and isinstance(data["train"]["raw_text"], list)
    assert data["train"]["text"].dtype == np.float32 and data["train"]["regression_labels"].dtype == np.float32

    corpus = read_mmsa(path)
    lens = spec.aligned_lens if aligned else spec.unaligned_lens
    assert (corpus.name, corpus.aligned, corpus.dims, corpus.seq_lens) == (dataset, aligned, spec.dims, lens)
    assert corpus.label_range == spec.label_range
    for split, n in zip(SPLITS, TINY):
        part, src = corpus.splits[split], data[split]
        assert len(part) == n and part.ids == src["id"] and part.raw_text == src["raw_text"]
        assert all("$_$" in i for i in part.ids)
        for m in MODALITIES:
            x = part.features[m]
            assert x.dtype == np.float32 and x.shape == (n, lens[m], spec.dims[m])
            assert np.isfinite(x).all()
            lengths = part.lengths[m]
            assert (
                lengths.dtype == np.int64 and lengths.shape == (n,) and lengths.min() >= 1 and lengths.max() <= lens[m]
            )
            steps = np.arange(lens[m])[None, :]
            assert not np.any(x[steps >= lengths[:, None]]), f"{m}: non-zero padding"
            assert np.all(np.any(x != 0, axis=2).sum(1) == lengths), f"{m}: zero rows inside the valid steps"
        assert np.array_equal(part.lengths["text"], src["text_bert"][:, 1].sum(1).astype(np.int64))
        if aligned:
            assert all((part.lengths[m] == lens[m]).all() for m in ("audio", "video"))
        else:
            assert np.array_equal(part.lengths["audio"], src["audio_lengths"])
            assert np.array_equal(part.lengths["video"], src["vision_lengths"])
        neg = np.isneginf(src["audio"])
        assert neg.any(), "the generator plants a few -inf audio entries, as in the real files"
        assert (part.features["audio"][neg] == 0).all()
        y = part.regression
        assert y.dtype == np.float32 and np.abs(y).max() <= spec.label_range
        assert np.array_equal(part.classes3, np.sign(y).astype(np.int64) + 1)
        assert set(part.unimodal) == (set(MODALITIES) if dataset == "sims" else set())


def test_generator_is_deterministic_by_seed(tmp_path):
    a, b = tiny(tmp_path / "a"), tiny(tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    assert tiny(tmp_path / "c", seed=1).read_bytes() != a.read_bytes()


def test_generator_overrides_dims_and_lengths_and_labels_spread_over_seven_classes(tmp_path):
    path = write_mmsa_file(
        tmp_path / "f.pkl", "mosei", samples=(700, 5, 5), dims={"text": 12}, seq_lens={"audio": 30}, seed=3
    )
    corpus = read_mmsa(path)
    assert corpus.name == "custom" and corpus.dims == {"text": 12, "audio": 74, "video": 35}
    assert corpus.seq_lens == {"text": 50, "audio": 30, "video": 375}
    y = corpus.splits["train"].regression
    assert np.allclose(y * 3, np.round(y * 3), atol=1e-5)  # MOSEI's grid: averages of 3 annotators
    counts = np.bincount(np.round(y).astype(int) + 3, minlength=7)
    assert counts.min() >= 10, counts
    with pytest.raises(FeatureFileError, match="expected 768 text features for mosei, found 12"):
        read_mmsa(path, "mosei")


# ------------------------------------------------------------------------------------------- bad files


def corrupt(tmp_path: Path, change) -> Path:
    data = raw(tiny(tmp_path, "mosei"))
    change(data)
    return dump(data, tmp_path / "bad.pkl")


def _set(split: str, key: str, fn):
    def change(data):
        data[split][key] = fn(data[split][key])

    return change


def _nan(x):
    x = x.copy()
    x[3, 0, 1] = np.nan
    return x


def _pos_inf(x):
    x = x.copy()
    x[2, 0, 0] = np.inf
    return x


def _neg_inf(x):
    x = x.copy()
    x[1, 0, 0] = -np.inf
    return x


BAD = {
    "missing key": (lambda d: d["valid"].pop("audio"), r"split 'valid', key 'audio': missing"),
    "wrong rank": (_set("train", "vision", lambda x: x[:, 0]), r"split 'train', key 'vision': expected a 3-D"),
    "text_bert shape": (_set("test", "text_bert", lambda x: x[:, :2]), r"split 'test', key 'text_bert': expected"),
    "dims vs dataset": (
        lambda d: [d[s].__setitem__("audio", d[s]["audio"][:, :, :73]) for s in SPLITS],
        r"split 'train', key 'audio': expected 74 audio features for mosei, found 73",
    ),
    "dims between splits": (
        _set("test", "vision", lambda x: x[:, :, :30]),
        r"split 'test', key 'vision': 30 features per step, split 'train' has 35",
    ),
    "samples between keys": (_set("train", "audio", lambda x: x[:-1]), r"split 'train', key 'audio': has 39 samples"),
    "nan": (_set("valid", "vision", _nan), r"split 'valid', key 'vision': holds NaN values \(first in sample 3\)"),
    "+inf": (_set("train", "text", _pos_inf), r"split 'train', key 'text': holds \+inf"),
    "-inf outside audio": (_set("train", "vision", _neg_inf), r"split 'train', key 'vision': holds -inf"),
    "nan label": (_set("test", "regression_labels", lambda y: np.where(np.arange(len(y)) == 4, np.nan, y)), "'test'"),
    "label range": (
        _set("train", "regression_labels", lambda y: np.where(np.arange(len(y)) == 5, 3.5, y).astype(np.float32)),
        r"split 'train', key 'regression_labels': holds 3.5 \(sample 5\); expected \[-3.0, 3.0\]",
    ),
    "classes": (
        _set("valid", "classification_labels", lambda c: np.where(np.arange(len(c)) == 0, 5, c)),
        r"split 'valid', key 'classification_labels': holds 5",
    ),
    "length > L": (
        _set("train", "audio_lengths", lambda n: np.where(np.arange(len(n)) == 2, 501, n)),
        r"split 'train', key 'audio_lengths': holds 501 \(sample 2\); expected whole numbers in \[0, 500\]",
    ),
    "empty split": (
        lambda d: d.__setitem__("test", {k: v[:0] for k, v in d["test"].items()}),
        r"split 'test', key 'text': the split is empty",
    ),
    "missing split": (lambda d: d.pop("valid"), r"no split 'valid'"),
    "split not a dict": (lambda d: d.__setitem__("train", [1, 2]), r"split 'train' is a list"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_every_bad_file_kind_is_one_clear_error(tmp_path, kind):
    change, message = BAD[kind]
    path = corrupt(tmp_path, change)
    with pytest.raises(FeatureFileError, match=message) as err:
        read_mmsa(path, "mosei")
    assert str(path) in str(err.value)


def test_files_that_are_not_feature_pickles(tmp_path):
    good = tiny(tmp_path).read_bytes()
    cases = {
        "truncated.pkl": (good[: len(good) // 2], "truncated"),
        "text.pkl": (b"hello, I am not a pickle\n", "not a valid pickle"),
        "empty.pkl": (b"", "empty"),
        "list.pkl": (pickle.dumps([1, 2, 3]), "the top level is a list, expected a dict"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(FeatureFileError, match=message) as err:
            read_mmsa(tmp_path / name)
        assert str(tmp_path / name) in str(err.value)
    with pytest.raises(FeatureFileError, match="no such feature file"):
        read_mmsa(tmp_path / "absent.pkl")


class _Payload:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize(
    "make, refused",
    [
        (lambda p: _Payload(os.system, (f"touch {p}",)), r"(posix|os)\.system"),
        (lambda p: _Payload(subprocess.Popen, (["touch", str(p)],)), r"subprocess\.Popen"),
        (lambda p: _Payload(eval, (f"__import__('os').system('touch {p}')",)), r"builtins\.eval"),
    ],
    ids=["os.system", "subprocess.Popen", "eval"],
)
def test_hostile_pickle_is_refused_before_it_runs(tmp_path, make, refused):
    pwned = tmp_path / "pwned"
    data = raw(tiny(tmp_path))
    data["train"]["id"] = make(pwned)  # hidden deep inside an otherwise valid file
    path = dump(data, tmp_path / "hostile.pkl")
    with pytest.raises(FeatureFileError, match=rf"{path}: refuses to load {refused}: a feature file may hold only"):
        read_mmsa(path)
    assert not pwned.exists()


@pytest.mark.parametrize("protocol", range(6))
def test_safe_load_reads_numpy_and_containers_in_every_protocol(tmp_path, protocol):
    obj = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": {1, 2}, "f": frozenset("x"), "c": 1 + 2j}
    obj |= {"n": np.float64(2.5), "u": np.array(["ab", "c"]), "o": np.array(["x", None], dtype=object), "t": (1, "b")}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    got = safe_load(path)
    assert np.array_equal(got["a"], obj["a"]) and got["s"] == {1, 2} and got["c"] == 1 + 2j and got["t"] == (1, "b")
    assert got["n"] == 2.5 and got["u"].tolist() == ["ab", "c"] and got["o"].tolist() == ["x", None]


def test_safe_load_latin1_reads_python2_style_byte_strings(tmp_path):
    path = tmp_path / "py2.pkl"
    path.write_bytes(b"(dp0\nS'ids'\np1\n(lp2\nS'caf\\xe9'\np3\nasS'y'\np4\nF1.5\ns.")  # protocol 0, str = bytes
    assert safe_load(path, encoding="latin1") == {"ids": ["caf\xe9"], "y": 1.5}


def test_check_dims_names_model_and_file(tmp_path):
    corpus = read_mmsa(tiny(tmp_path, "mosi"))
    check_dims(corpus, {"text": 768, "video": 20}, "checkpoint X")
    with pytest.raises(FeatureFileError, match=r"model expects 35 video features \(checkpoint X\), file .* has 20"):
        check_dims(corpus, {"video": 35}, "checkpoint X")


# ---------------------------------------------------------------------------------------------- cache


def assert_same(a: FeatureCorpus, b: FeatureCorpus) -> None:
    assert (a.name, a.aligned, a.dims, a.seq_lens, a.label_range) == (
        b.name,
        b.aligned,
        b.dims,
        b.seq_lens,
        b.label_range,
    )
    for s in SPLITS:
        x, y = a.splits[s], b.splits[s]
        assert x.ids == y.ids and x.raw_text == y.raw_text and set(x.unimodal) == set(y.unimodal)
        for m in MODALITIES:
            assert np.array_equal(x.features[m], y.features[m]) and np.array_equal(x.lengths[m], y.lengths[m])
        assert np.array_equal(x.regression, y.regression) and np.array_equal(x.classes3, y.classes3)
        assert all(np.array_equal(x.unimodal[m], y.unimodal[m]) for m in x.unimodal)


def test_cache_converts_once_then_memory_maps(tmp_path, monkeypatch):
    path = tiny(tmp_path, "sims")
    first = open_features(path, tmp_path / "cache")
    folders = list((tmp_path / "cache" / "features").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("sims-") and (folders[0] / "meta.json").is_file()
    assert (folders[0] / "train" / "audio.npy").is_file()

    import avemo.training.data.feature_cache as fc

    monkeypatch.setattr(fc, "read_mmsa", lambda *a, **k: pytest.fail("a cached file is read again"))
    second = open_features(path, tmp_path / "cache", dataset="sims")
    for m in MODALITIES:
        arr = second.splits["train"].features[m]
        assert isinstance(arr, np.memmap) and not arr.flags.writeable
    assert_same(second, read_mmsa(path))
    assert_same(first, second)
    with pytest.raises(FeatureFileError, match="expected 74 audio features for mosei, found 33"):
        open_features(path, tmp_path / "cache", dataset="mosei")


def test_pickled_dataset_over_the_cache_sends_file_references_not_arrays(tmp_path):
    corpus = open_features(tiny(tmp_path, "mosei"), tmp_path / "cache")
    ds = FeatureDataset(corpus.splits["train"], ("text", "audio", "video"), "regression")
    blob = pickle.dumps(ds)
    assert len(blob) < 100_000  # the train features alone are ~14 MB
    copy = pickle.loads(blob)
    assert isinstance(copy.split.features["audio"], np.memmap)
    for key, value in ds[7].items():
        assert torch.equal(copy[7][key], value)


def test_changed_source_gets_a_new_key_and_the_old_cache_goes(tmp_path):
    path = tiny(tmp_path, "mosi")
    open_features(path, tmp_path / "cache")
    (old,) = (tmp_path / "cache" / "features").iterdir()
    write_mmsa_file(path, "mosi", samples=TINY, seed=7)  # same size, new content
    corpus = open_features(path, tmp_path / "cache")
    (new,) = (tmp_path / "cache" / "features").iterdir()
    assert new.name != old.name and new.name.startswith("mosi-")
    assert_same(corpus, read_mmsa(path))


# -------------------------------------------------------------------------------------------- dataset


def test_parse_modalities():
    assert parse_modalities("atv") == ("text", "audio", "video")
    assert parse_modalities("VA") == ("audio", "video")
    assert parse_modalities("t") == ("text",)
    for bad, message in (("", "empty"), ("tx", "unknown letter 'x'"), ("tat", "text .* more than once")):
        with pytest.raises(ValueError, match=message):
            parse_modalities(bad)


def test_dataset_items_and_targets(tmp_path):
    split = read_mmsa(tiny(tmp_path, "mosei")).splits["train"]
    y = split.regression
    ds = FeatureDataset(split, ("audio", "video"), "classification", 7)
    assert len(ds) == len(split) and ds.sources == split.ids and ds.dims == {"audio": 74, "video": 35}
    item = ds[5]
    assert set(item) == {"audio", "video", "lengths", "mask", "label", "clip"}
    assert item["audio"].shape == (500, 74) and item["audio"].dtype == torch.float32
    assert item["video"].shape == (375, 35)
    assert item["lengths"].tolist() == [split.lengths["audio"][5], split.lengths["video"][5]]
    assert item["mask"].tolist() == [1.0, 1.0] and item["clip"].item() == 5 and item["clip"].dtype == torch.int64
    assert item["label"].dtype == torch.int64 and item["label"].item() == round(float(y[5])) + 3
    assert np.array_equal(ds.labels, np.round(y).astype(np.int64) + 3)

    reg = FeatureDataset(split, ("text",), "regression", 1)
    assert reg[3]["label"].dtype == torch.float32 and reg[3]["label"].item() == pytest.approx(float(y[3]))
    assert np.array_equal(reg.labels, y)
    assert np.array_equal(targets(split, "classification", 2), (y >= 0).astype(np.int64))
    assert np.array_equal(targets(split, "classification", 3), split.classes3)
    for bad in (4, 5):
        with pytest.raises(ValueError, match="2, 3 or 7"):
            FeatureDataset(split, ("text",), "classification", bad)
    with pytest.raises(ValueError, match="task"):
        FeatureDataset(split, ("text",), "ranking", 3)
    assert class_names(2) == ("negative", "non-negative")
    assert class_names(3) == ("negative", "neutral", "positive")
    assert class_names(7) == ("-3", "-2", "-1", "0", "1", "2", "3")


def test_sims_seven_classes_stretch_the_label_range(tmp_path):
    split = read_mmsa(tiny(tmp_path, "sims")).splits["train"]
    classes = targets(split, "classification", 7)
    assert np.array_equal(classes, np.round(np.clip(split.regression * 3, -3, 3)).astype(np.int64) + 3)
    assert classes.min() >= 0 and classes.max() <= 6


# ----------------------------------------------------------------------------------- planted sentiment


def _pooled(split, modalities) -> np.ndarray:
    """Mean over each sample's valid steps, modalities side by side: [N, sum D_m]."""
    return np.concatenate([split.features[m].sum(1) / split.lengths[m][:, None] for m in modalities], axis=1)


def _ridge_corr(corpus: FeatureCorpus, modalities) -> float:
    """Pearson corr on test of a ridge fit on train (penalty chosen on valid) over mean-pooled features."""
    tr, va, te = (corpus.splits[s] for s in SPLITS)
    x = _pooled(tr, modalities)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x = (x - mu) / sd
    best: tuple[float, np.ndarray | None] = (-2.0, None)
    for ridge in (1.0, 10.0, 100.0, 1000.0):
        w = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ (tr.regression - tr.regression.mean()))
        r = np.corrcoef(((_pooled(va, modalities) - mu) / sd) @ w, va.regression)[0, 1]
        best = max(best, (r, w), key=lambda b: b[0])
    return float(np.corrcoef(((_pooled(te, modalities) - mu) / sd) @ best[1], te.regression)[0, 1])


def test_each_modality_carries_a_different_part_of_the_sentiment(tmp_path):
    path = write_mmsa_file(
        tmp_path / "signal.pkl",
        "mosei",
        samples=(1000, 300, 1000),
        seed=0,
        dims={"text": 48, "audio": 16, "video": 24},
        seq_lens={"text": 16, "audio": 40, "video": 30},
    )
    corpus = read_mmsa(path)
    corr = {k: [_ridge_corr(corpus, c) for c in itertools.combinations(MODALITIES, k)] for k in (1, 2, 3)}
    assert 0.35 < min(corr[1]) and max(corr[1]) < 0.65, corr
    assert max(corr[1]) + 0.05 < min(corr[2]), corr
    assert max(corr[2]) + 0.05 < corr[3][0], corr
    assert corr[3][0] > 0.8, corr


def test_modality_keys_name_mmsa_arrays():
    assert MODALITY_KEYS == {"text": "text", "audio": "audio", "video": "vision"}
