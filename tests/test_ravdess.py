"""RAVDESS name parsing, scanning (no decoding) and leak-free splits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from avemo.contract.labels import EMOTIONS_4, EMOTIONS_8, MAP_8_TO_4
from avemo.training.data.ravdess import (
    Item,
    Problem,
    RavdessName,
    check_no_leak,
    default_actor_split,
    kfold_by_actor,
    make_item,
    scan,
    split_by_actors,
    split_summary,
    stratified_split,
)


# ---------------------------------------------------------------------------------------- parsing
def test_parse_valid_name_and_properties():
    n = RavdessName.parse("01-01-03-02-01-02-12.mp4")
    assert (n.modality, n.vocal_channel, n.emotion, n.intensity, n.statement, n.repetition, n.actor) == (
        1,
        1,
        3,
        2,
        1,
        2,
        12,
    )
    assert n.emotion_name == "happy"
    assert n.gender == "female"
    assert RavdessName.parse("03-01-05-01-02-01-07.wav").gender == "male"
    assert n.stem == "01-01-03-02-01-02-12"
    # the .wav and the .mp4 of one recording share the key; another modality does not change it
    assert n.recording_key == RavdessName.parse("03-01-03-02-01-02-12.wav").recording_key == "01-03-02-01-02-12"
    assert n.recording_key != RavdessName.parse("01-01-03-02-01-01-12.mp4").recording_key
    assert RavdessName.parse(Path("/x/Actor_12/02-01-08-01-01-01-12.mp4")).modality == 2
    assert RavdessName.parse("01-01-01-01-01-01-01").emotion_name == "neutral"  # no extension


@pytest.mark.parametrize(
    "name, reason",
    [
        ("01-01-03-02-01-12.mp4", "expected 7"),
        ("01-01-03-02-01-01-12-01.mp4", "expected 7"),
        ("hello.mp4", "expected 7"),
        ("01-01-0x-02-01-01-12.mp4", "emotion = '0x' is not numeric"),
        ("04-01-03-02-01-01-12.mp4", "modality = 04 is out of range 01..03"),
        ("01-03-03-02-01-01-12.mp4", "vocal_channel = 03 is out of range"),
        ("01-01-09-02-01-01-12.mp4", "emotion = 09 is out of range 01..08"),
        ("01-01-00-01-01-01-12.mp4", "emotion = 00 is out of range"),
        ("01-01-03-03-01-01-12.mp4", "intensity = 03"),
        ("01-01-03-01-03-01-12.mp4", "statement = 03"),
        ("01-01-03-01-01-03-12.mp4", "repetition = 03"),
        ("01-01-03-01-01-01-00.mp4", "actor = 00"),
        ("01-01-01-02-01-01-12.mp4", "neutral (emotion 01) has no strong intensity"),
    ],
)
def test_parse_invalid_names_give_specific_reasons(name, reason):
    with pytest.raises(ValueError) as e:
        RavdessName.parse(name)
    assert reason in str(e.value)
    assert name.split(".")[0] in str(e.value)


def test_label_mapping_8_and_4():
    for code, emo in enumerate(EMOTIONS_8, start=1):
        name = RavdessName(1, 1, code, 1, 1, 1, 1)
        it8, it4 = make_item("x.mp4", name, 8), make_item("x.mp4", name, 4)
        assert (it8.label, it8.label_name) == (code - 1, emo)
        assert it4.label_name == MAP_8_TO_4[emo] and EMOTIONS_4[it4.label] == it4.label_name
    assert make_item("x", RavdessName(1, 1, 2, 1, 1, 1, 1), 4).label_name == "neutral"  # calm -> neutral
    assert make_item("x", RavdessName(1, 1, 8, 1, 1, 1, 1), 4).label_name == "happy"  # surprised -> happy


# --------------------------------------------------------------------------------------- scanning
def _touch(p: Path):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")


@pytest.fixture
def fake_tree(tmp_path):
    root = tmp_path / "ravdess"
    # Video_Speech_Actor_01.zip unpacked into its own folder (nested one level deeper)
    for m in (1, 2):
        for e in (1, 3):
            _touch(root / "Video_Speech_Actor_01" / "Actor_01" / f"0{m}-01-0{e}-01-01-01-01.mp4")
    # Actor_02 directly under root: speech + song videos, and audio-only speech wavs
    _touch(root / "Actor_02" / "01-01-05-02-02-01-02.mp4")
    _touch(root / "Actor_02" / "01-02-05-02-02-01-02.mp4")  # song
    # Audio_Speech_Actors_01-24.zip unpacked under audio/
    _touch(root / "audio" / "Actor_01" / "03-01-01-01-01-01-01.wav")
    _touch(root / "audio" / "Actor_02" / "03-01-05-02-02-01-02.wav")
    # problems
    _touch(root / "Actor_02" / "01-01-05-02-02-02.mp4")  # 6 fields
    _touch(root / "Actor_02" / "01-01-04-01-01-01-03.mp4")  # actor 03 in Actor_02
    _touch(root / "Actor_02" / "03-01-04-01-01-01-02.mp4")  # audio-only modality in an .mp4
    _touch(root / "stray" / "01-01-04-01-01-01-05.mp4")  # outside any Actor_XX folder
    # ignored silently
    _touch(root / "Actor_02" / "notes.txt")
    _touch(root / "Actor_02" / "meta.json")
    _touch(root / "Actor_02" / ".01-01-03-01-01-01-02.mp4")
    _touch(root / ".hidden" / "Actor_05" / "01-01-03-01-01-01-05.mp4")
    return root


def test_scan_default_is_audio_video_speech(fake_tree):
    items, problems = scan(fake_tree)
    names = [it.path.name for it in items]
    assert names == ["01-01-01-01-01-01-01.mp4", "01-01-03-01-01-01-01.mp4", "01-01-05-02-02-01-02.mp4"]
    assert [it.actor for it in items] == [1, 1, 2]
    assert [it.label_name for it in items] == ["neutral", "happy", "angry"]
    assert all(isinstance(it, Item) and it.path.exists() for it in items)
    reasons = {Path(p.path).name: p.reason for p in problems}
    assert set(reasons) == {
        "01-01-05-02-02-02.mp4",
        "01-01-04-01-01-01-03.mp4",
        "03-01-04-01-01-01-02.mp4",
        "01-01-04-01-01-01-05.mp4",
    }
    assert "malformed" in reasons["01-01-05-02-02-02.mp4"] and "expected 7" in reasons["01-01-05-02-02-02.mp4"]
    assert "disagrees with folder Actor_02" in reasons["01-01-04-01-01-01-03.mp4"]
    assert "not valid for a .mp4" in reasons["03-01-04-01-01-01-02.mp4"]
    assert "outside an Actor_XX folder" in reasons["01-01-04-01-01-01-05.mp4"]
    assert all(isinstance(p, Problem) and set(p.to_dict()) == {"path", "reason"} for p in problems)


def test_scan_filters(fake_tree):
    wavs, _ = scan(fake_tree, modality=3)
    assert [it.path.suffix for it in wavs] == [".wav", ".wav"] and [it.actor for it in wavs] == [1, 2]
    song, _ = scan(fake_tree, vocal_channel=2)
    assert [it.path.name for it in song] == ["01-02-05-02-02-01-02.mp4"]
    both, _ = scan(fake_tree, vocal_channel=None)
    assert len(both) == 4
    video_only, _ = scan(fake_tree, modality=2)
    assert [it.path.name for it in video_only] == ["02-01-01-01-01-01-01.mp4", "02-01-03-01-01-01-01.mp4"]
    everything, _ = scan(fake_tree, modality=None, vocal_channel=None, num_classes=4)
    assert len(everything) == 8
    assert {it.label_name for it in everything} <= set(EMOTIONS_4)
    assert everything == sorted(everything, key=lambda it: (it.actor, it.path.name))
    # deterministic
    assert [it.path for it in scan(fake_tree, modality=None)[0]] == [
        it.path for it in scan(fake_tree, modality=None)[0]
    ]


def test_scan_duplicates_missing_root_and_empty(tmp_path, fake_tree):
    _touch(fake_tree / "again" / "Actor_02" / "01-01-05-02-02-01-02.mp4")  # same file unpacked twice
    items, problems = scan(fake_tree)
    assert len(items) == 3
    assert any("duplicate of" in p.reason for p in problems)
    with pytest.raises(FileNotFoundError):
        scan(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    items, problems = scan(tmp_path / "empty")
    assert items == [] and "no Actor_XX folders" in problems[0].reason
    with pytest.raises(ValueError):
        scan(fake_tree, num_classes=5)


# ----------------------------------------------------------------------------------------- splits
def _corpus(actors, modalities=(1,), emotions=range(1, 9)):
    """Synthetic items: every actor x emotion x statement x repetition (no files needed)."""
    out = []
    for a in actors:
        for m in modalities:
            for e in emotions:
                for s in (1, 2):
                    for r in (1, 2):
                        n = RavdessName(m, 1, e, 1, s, r, a)
                        out.append(make_item(f"Actor_{a:02d}/{n.stem}.{'wav' if m == 3 else 'mp4'}", n))
    return out


def _actors(split):
    return {it.actor for it in split}


def test_default_actor_split():
    assert default_actor_split(range(1, 25)) == (list(range(1, 17)), [17, 18, 19, 20], [21, 22, 23, 24])
    train, val, test = default_actor_split(list(range(1, 11)))
    assert (len(train), len(val), len(test)) == (6, 2, 2)
    for part in (val, test):
        assert sorted(a % 2 for a in part) == [0, 1]  # one male, one female
    assert set(train) | set(val) | set(test) == set(range(1, 11))
    assert default_actor_split([4, 9, 2]) == ([2], [9], [4])  # one of each gender in val/test
    assert [len(x) for x in default_actor_split([1, 2, 3])] == [1, 1, 1]
    with pytest.raises(ValueError, match=">= 3 actors"):
        default_actor_split([1, 2])


def test_split_by_actors():
    items = _corpus(range(1, 11))
    train, val, test = default_actor_split(range(1, 11))
    splits = split_by_actors(items, train, val, test)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [6 * 32, 2 * 32, 2 * 32]
    assert _actors(splits["test"]) == set(test) and _actors(splits["val"]) == set(val)
    check_no_leak(splits, by_actor=True)
    with pytest.raises(ValueError, match="both train and test"):
        split_by_actors(items, [1, 2, 3], [4], [3, 5])


def test_kfold_covers_each_actor_once():
    items = _corpus(range(1, 11))
    k = 5
    seen = Counter()
    for fold in range(k):
        splits = kfold_by_actor(items, k, fold)
        check_no_leak(splits, by_actor=True)
        assert len(splits["val"]) > 0 and len(splits["train"]) > 0 and len(splits["test"]) > 0
        assert len(splits["train"]) + len(splits["val"]) + len(splits["test"]) == len(items)
        test_actors = _actors(splits["test"])
        assert len(test_actors) == 2 and sorted(a % 2 for a in test_actors) == [0, 1]
        seen.update(test_actors)
    assert seen == Counter({a: 1 for a in range(1, 11)})
    assert kfold_by_actor(items, k, 1)["val"] == kfold_by_actor(items, k, 1)["val"]  # deterministic
    with pytest.raises(ValueError):
        kfold_by_actor(items, k, 5)
    with pytest.raises(ValueError):
        kfold_by_actor(items, 11, 0)


def test_stratified_split_groups_recordings_and_keeps_proportions():
    # both modalities kept: every recording exists as .wav and .mp4 and must stay in one split
    items = _corpus(range(1, 7), modalities=(1, 3))
    splits = stratified_split(items, val_fraction=0.15, test_fraction=0.15, seed=0)
    check_no_leak(splits)
    assert sum(len(v) for v in splits.values()) == len(items)
    for v in splits.values():
        keys = Counter(it.recording_key for it in v)
        assert set(keys.values()) == {2}  # .wav and .mp4 together
    for split, frac in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        per_label = Counter(it.label for it in splits[split])
        assert set(per_label) == set(range(8))
        for label in range(8):
            assert abs(per_label[label] / 48 - frac) < 0.06  # 24 recordings x 2 files per label
    again = stratified_split(items, seed=0)
    assert [it.path for it in again["test"]] == [it.path for it in splits["test"]]
    assert [it.path for it in stratified_split(items, seed=1)["test"]] != [it.path for it in splits["test"]]
    summary = split_summary(splits)
    assert summary["test"]["items"] == len(splits["test"]) and sum(summary["val"]["per_label"].values()) == len(
        splits["val"]
    )


def test_check_no_leak_raises():
    items = _corpus([1, 2], modalities=(1, 3))
    mp4 = [it for it in items if it.path.suffix == ".mp4"]
    wav = [it for it in items if it.path.suffix == ".wav"]
    with pytest.raises(ValueError, match="recordings leak between train and test"):
        check_no_leak({"train": mp4, "val": [], "test": wav[:1]})
    a1 = [it for it in mp4 if it.actor == 1]
    ok = {"train": a1[:10], "val": [], "test": a1[10:]}
    check_no_leak(ok)
    with pytest.raises(ValueError, match="actors \\[1\\]"):
        check_no_leak(ok, by_actor=True)
