"""Emotion-in-conversation feature files (IEMOCAP, MELD; DialogueRNN / COGMEN / MMGCN pickles): read, validate.

IEMOCAP (``IEMOCAP_features.pkl``, written by Python 2: read with ``encoding="latin1"``) is a 9-tuple
``videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, videoSentence, trainVid,
testVid``. The first 7 are dicts keyed by dialogue id ('Ses01F_impro01'): utterance ids
('Ses01F_impro01_F000'), speakers 'M' / 'F', labels (ints: hap 0, sad 1, neu 2, ang 3, exc 4, fru 5),
text / audio / visual features (one 1-D float array per utterance: 100 / 100 / 512 in the original
file, but other feature sets circulate -- dims always come from the file) and sentences. ``trainVid`` /
``testVid`` are collections of dialogue ids (120 / 31 dialogues). ``iemocap_4`` keeps only the
utterances labelled hap / sad / neu / ang (a dialogue left empty is dropped), as COGMEN's 4-class file.

MELD is DialogueRNN's 9-tuple ``videoIDs, videoSpeakers, videoLabelsEmotion, videoText, videoAudio,
videoSentence, trainVid, testVid, videoLabelsSentiment`` (no visual features; text [n, 600], audio
[n, 300]) or MMGCN / M3NET's 10-tuple ``videoIDs, videoSpeakers, videoLabels, videoText, videoAudio,
videoVisual, videoSentence, trainVid, testVid, videoLabelsSentiment`` (visual [n, 342]). Dialogue ids
are ints, speakers one-hot lists (length 9 in the original; speaker index = argmax), emotions neutral 0,
surprise 1, fear 2, sadness 3, joy 4, disgust 5, anger 6, sentiments neutral 0, positive 1, negative 2.
``meld`` reads the emotions, ``meld_sentiment`` the sentiments.

``read_dialogues`` loads a file with the restricted unpickler (a downloaded pickle is untrusted code),
checks everything once -- tuple layout, dict keys, splits, per-dialogue lengths, 1-D numeric features
with one dim per modality, NaN / inf, label ranges, speakers -- and returns a ``DialogueCorpus`` in our
names (modalities text / audio / video; float32 [n, D] features per dialogue). The valid split is a seeded
10 % of the training dialogues, as the papers' loaders take it. Every problem is one ``FeatureFileError``
naming the file, the dialogue / key, what was expected and what was found.

Folds (``read_dialogues(..., folds=K, fold=k)``): K folds over every dialogue of the file (trainVid and
testVid together) that keep whole groups in one split: an IEMOCAP session (the 'Ses01' of 'Ses01F_impro01':
its two actors speak in every dialogue of the session, so leave-sessions-out folds keep every speaker out of
training when tested), a MELD dialogue (MELD's speakers are one-hot slots that name nobody across dialogues).
Fold k tests the k-th of K near-equal chunks of the groups (IEMOCAP: the sorted sessions, so 5 folds leave
one session out each; MELD: the dialogues in a permutation of ``seed``); the valid split is ``valid_fraction``
of the remaining dialogues (from the training sessions: the test sessions stay unseen). ``check_no_leak``
refuses a dialogue in two splits and a test session in train / valid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avemo.training.data.safe_pickle import FeatureFileError, safe_load

DIALOGUE_DATASETS = ("iemocap", "iemocap_4", "meld", "meld_sentiment")
LAYOUTS = {"iemocap": "iemocap", "iemocap_4": "iemocap", "meld": "meld", "meld_sentiment": "meld"}
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "iemocap": ("hap", "sad", "neu", "ang", "exc", "fru"),
    "iemocap_4": ("hap", "sad", "neu", "ang"),
    "meld": ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"),
    "meld_sentiment": ("neutral", "positive", "negative"),
}
# the tuple layouts, by length; videoLabels* entries hold the labels, video* the features
_IEMOCAP = ("videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoVisual", "videoSentence")
_MELD_9 = ("videoIDs", "videoSpeakers", "videoLabelsEmotion", "videoText", "videoAudio", "videoSentence")
_MELD_10 = ("videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoVisual", "videoSentence")
TUPLES: dict[str, dict[int, tuple[str, ...]]] = {
    "iemocap": {9: (*_IEMOCAP, "trainVid", "testVid")},
    "meld": {
        9: (*_MELD_9, "trainVid", "testVid", "videoLabelsSentiment"),
        10: (*_MELD_10, "trainVid", "testVid", "videoLabelsSentiment"),
    },
}
_TUPLE_HELP = {
    "iemocap": "an IEMOCAP file is a 9-tuple ({})".format(", ".join(TUPLES["iemocap"][9])),
    "meld": "a MELD file is DialogueRNN's 9-tuple without visual features ({}) or MMGCN's 10-tuple with "
    "videoVisual ({})".format(", ".join(TUPLES["meld"][9]), ", ".join(TUPLES["meld"][10])),
}
FEATURE_KEYS = {"videoText": "text", "videoAudio": "audio", "videoVisual": "video"}  # file key -> our modality
EMOTION_KEYS = ("videoLabels", "videoLabelsEmotion")
IEMOCAP_SPEAKERS = {"M": 0, "F": 1}
SESSION = re.compile(r"^Ses(\d+)")  # IEMOCAP dialogue id -> session number ('Ses01F_impro01' -> 1)


@dataclass
class Dialogue:
    """One dialogue, validated: n utterances, every array in utterance order."""

    id: str  # dialogue id as str
    features: dict[str, np.ndarray]  # modality -> float32 [n, D_m], C-contiguous
    labels: np.ndarray  # int64 [n], class ids of the dataset (iemocap_4: 0..3)
    speakers: np.ndarray  # int64 [n]: IEMOCAP M 0, F 1; MELD the argmax of the one-hot
    utterance_ids: list[str]  # [n]
    sentences: list[str]  # [n]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DialogueCorpus:
    """A whole dialogue file: three splits of dialogues and the dims every dialogue shares."""

    name: str  # one of DIALOGUE_DATASETS
    path: Path
    splits: dict[str, list[Dialogue]]  # "train" | "valid" | "test", dialogues in sorted-id order
    dims: dict[str, int]  # the modalities the file has -> D (MELD's 9-tuple: no "video")
    num_speakers: int  # IEMOCAP 2; MELD the one-hot length
    class_names: tuple[str, ...]
    fold: dict = field(default_factory=dict)  # with folds: folds, fold, group ("session" / "dialogue"), test_groups


def _text(value: object) -> str:
    """A Python-2 str read as bytes is decoded latin1; str and numbers as they are."""
    return value.decode("latin1") if isinstance(value, bytes | bytearray) else str(value)


def _sequence(path: Path, where: str, value: object) -> list | tuple | np.ndarray:
    """``value`` when it is a list / tuple / array with one entry per utterance."""
    if isinstance(value, np.ndarray) and value.ndim == 0 or not isinstance(value, list | tuple | np.ndarray):
        raise FeatureFileError(
            f"{path}: {where}: expected a list with one entry per utterance, found {type(value).__name__}"
        )
    return value


def _features(path: Path, where: str, value: object) -> np.ndarray:
    """A list of 1-D numeric vectors or a 2-D array -> finite float32 [n, D], C-contiguous."""
    value = _sequence(path, where, value)
    if isinstance(value, np.ndarray):
        if value.ndim != 2 or value.dtype.kind not in "fiu":
            raise FeatureFileError(
                f"{path}: {where}: expected [utterances, D] numbers, found {value.dtype} {value.shape}"
            )
        arr = value
    else:
        rows: list[np.ndarray] = []
        for i, row in enumerate(value):
            try:
                vec = np.asarray(row)
            except (ValueError, TypeError):
                vec = np.asarray(None)
            if vec.ndim != 1 or vec.dtype.kind not in "fiu":
                found = f"{vec.dtype} {vec.shape}" if vec.dtype != object else type(row).__name__
                raise FeatureFileError(
                    f"{path}: {where}, utterance {i}: expected a 1-D vector of numbers, found {found}"
                )
            if rows and len(vec) != len(rows[0]):
                raise FeatureFileError(
                    f"{path}: {where}, utterance {i}: {len(vec)} features, utterance 0 has {len(rows[0])}"
                )
            rows.append(vec)
        arr = np.stack(rows) if rows else np.zeros((0, 0))
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = ~np.isfinite(arr)
        first = int(np.argmax(bad.any(axis=1)))
        what = "NaN" if np.isnan(arr[first]).any() else "inf"
        raise FeatureFileError(f"{path}: {where}, utterance {first}: holds {what}; expected finite features")
    return arr


def _labels(path: Path, where: str, value: object, names: tuple[str, ...]) -> np.ndarray:
    """Whole numbers in [0, len(names) - 1] -> int64 [n]."""
    value = _sequence(path, where, value)
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):  # ragged nested lists
        arr = np.asarray(None)
    if arr.ndim != 1 or arr.dtype.kind not in "fiu":
        raise FeatureFileError(f"{path}: {where}: expected a list of class ids, found {arr.dtype} {arr.shape}")
    high = len(names) - 1
    bad = ~np.isfinite(arr.astype(np.float64)) | (arr != np.round(arr)) | (arr < 0) | (arr > high)
    if bad.any():
        first = int(np.argmax(bad))
        shown = arr[first].item()
        shown = int(shown) if float(shown).is_integer() else shown
        raise FeatureFileError(
            f"{path}: {where}, utterance {first}: label {shown}; expected whole numbers in [0, {high}] "
            f"({', '.join(f'{i} {c}' for i, c in enumerate(names))})"
        )
    return np.round(arr).astype(np.int64)


def _speakers(path: Path, where: str, value: object, layout: str) -> tuple[np.ndarray, int]:
    """IEMOCAP 'M' / 'F' -> 0 / 1; MELD one-hot lists -> argmax. Returns (int64 [n], one-hot length or 2)."""
    value = _sequence(path, where, value)
    if layout == "iemocap":
        out = []
        for i, s in enumerate(value):
            code = IEMOCAP_SPEAKERS.get(_text(s)) if isinstance(s, str | bytes) else None
            if code is None:
                raise FeatureFileError(f"{path}: {where}, utterance {i}: speaker {s!r}; expected 'M' or 'F'")
            out.append(code)
        return np.asarray(out, dtype=np.int64), len(IEMOCAP_SPEAKERS)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        arr = np.asarray(None)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise FeatureFileError(
            f"{path}: {where}: expected one one-hot list per utterance, found {arr.shape} {arr.dtype}"
        )
    bad = ~(((arr == 0) | (arr == 1)).all(axis=1) & (arr.sum(axis=1) == 1))
    if bad.any():
        first = int(np.argmax(bad))
        shown = [int(v) if float(v).is_integer() else v for v in arr[first].tolist()]
        raise FeatureFileError(
            f"{path}: {where}, utterance {first}: speaker {shown}; expected a one-hot list (one 1, the rest 0)"
        )
    return np.argmax(arr, axis=1).astype(np.int64), arr.shape[1]


def _strings(path: Path, where: str, value: object, numbers: bool) -> list[str]:
    """str / Python-2 bytes (and, with ``numbers``, ints: MELD's utterance ids may be) -> list of str."""
    out = []
    for i, s in enumerate(_sequence(path, where, value)):
        if not isinstance(s, str | bytes) and not (numbers and isinstance(s, int | np.integer)):
            raise FeatureFileError(f"{path}: {where}, utterance {i}: expected a string, found {type(s).__name__}")
        out.append(_text(s))
    return out


def _top(path: Path, data: object, layout: str) -> tuple[dict[str, Any], dict[str, dict[str, object]]]:
    """The tuple's entries by name and {dict name: {str id: key in the file}}, after checking the tuple's type
    and length, that the first entries are dicts and that they share their dialogue ids."""
    help_ = _TUPLE_HELP[layout]
    if not isinstance(data, tuple | list):
        raise FeatureFileError(f"{path}: the top level is a {type(data).__name__}; {help_}")
    names = TUPLES[layout].get(len(data))
    if names is None:
        raise FeatureFileError(f"{path}: the top level is a {len(data)}-tuple; {help_}")
    entries = dict(zip(names, data, strict=True))
    keys: dict[str, dict[str, object]] = {}  # name -> {str id: raw key}
    for i, name in enumerate(names):
        if name in ("trainVid", "testVid"):
            continue
        if not isinstance(entries[name], dict):
            kind = type(entries[name]).__name__
            raise FeatureFileError(
                f"{path}: entry {i} ({name}) is a {kind}, expected a dict keyed by dialogue id; {help_}"
            )
        by_str = {_text(k): k for k in entries[name]}
        if len(by_str) != len(entries[name]):
            raise FeatureFileError(f"{path}: {name} has two dialogue ids that read the same as strings")
        keys[name] = by_str
    reference = keys["videoIDs"]
    for name, found in keys.items():
        missing, extra = sorted(set(reference) - set(found)), sorted(set(found) - set(reference))
        if missing:
            raise FeatureFileError(
                f"{path}: {name} lacks dialogue {missing[0]!r} that videoIDs has ({len(missing)} missing)"
            )
        if extra:
            raise FeatureFileError(f"{path}: {name} has dialogue {extra[0]!r} that videoIDs lacks ({len(extra)} extra)")
    if not reference:
        raise FeatureFileError(f"{path}: videoIDs holds no dialogue")
    return entries, keys


def _split_ids(path: Path, entries: dict, known: dict[str, object], layout: str) -> dict[str, list[str]]:
    """trainVid / testVid as sorted str ids, each in videoIDs, no dialogue in both."""
    out = {}
    for name in ("trainVid", "testVid"):
        value = entries[name]
        if not isinstance(value, set | frozenset | list | tuple | np.ndarray):
            found = type(value).__name__
            raise FeatureFileError(
                f"{path}: {name} is a {found}, expected a set / list of dialogue ids; {_TUPLE_HELP[layout]}"
            )
        ids = sorted({_text(v.item() if isinstance(v, np.generic) else v) for v in value})
        if not ids:
            raise FeatureFileError(f"{path}: {name} is empty")
        unknown = [d for d in ids if d not in known]
        if unknown:
            raise FeatureFileError(
                f"{path}: {name} names dialogue {unknown[0]!r}, which videoIDs lacks ({len(unknown)} unknown)"
            )
        out[name] = ids
    both = sorted(set(out["trainVid"]) & set(out["testVid"]))
    if both:
        raise FeatureFileError(f"{path}: dialogue {both[0]!r} is in both trainVid and testVid ({len(both)} in both)")
    return out


def _dialogue(path: Path, raw: dict[str, object], did: str, dataset: str, dims: dict) -> tuple[Dialogue, int]:
    """One dialogue (``raw``: dict name -> its entry) validated; returns it and its speaker one-hot length.

    ``dims`` maps modality -> (D, the first dialogue that had it); a new modality is added."""
    layout = LAYOUTS[dataset]
    lengths = {name: len(_sequence(path, f"dialogue {did!r}, {name}", value)) for name, value in raw.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k} {v}" for k, v in lengths.items())
        raise FeatureFileError(f"{path}: dialogue {did!r}: lengths differ ({shown}); expected one entry per utterance")
    if lengths["videoIDs"] == 0:
        raise FeatureFileError(f"{path}: dialogue {did!r} has no utterances")
    features = {}
    for name, modality in FEATURE_KEYS.items():
        if name not in raw:
            continue
        arr = _features(path, f"dialogue {did!r}, {name}", raw[name])
        dim, first = dims.setdefault(modality, (arr.shape[1], did))
        if arr.shape[1] != dim:
            raise FeatureFileError(
                f"{path}: dialogue {did!r}, {name}: {arr.shape[1]} features per utterance, dialogue {first!r} has {dim}"
            )
        features[modality] = arr
    label_sets = {name: layout for name in EMOTION_KEYS if name in raw}
    if "videoLabelsSentiment" in raw:
        label_sets["videoLabelsSentiment"] = "meld_sentiment"
    read = "videoLabelsSentiment" if dataset == "meld_sentiment" else next(k for k in EMOTION_KEYS if k in raw)
    checked = {  # both MELD label sets are checked, whichever is read
        name: _labels(path, f"dialogue {did!r}, {name}", raw[name], CLASS_NAMES[names])
        for name, names in label_sets.items()
    }
    labels = checked[read]
    speakers, slots = _speakers(path, f"dialogue {did!r}, videoSpeakers", raw["videoSpeakers"], layout)
    dialogue = Dialogue(
        id=did,
        features=features,
        labels=labels,
        speakers=speakers,
        utterance_ids=_strings(path, f"dialogue {did!r}, videoIDs", raw["videoIDs"], numbers=True),
        sentences=_strings(path, f"dialogue {did!r}, videoSentence", raw["videoSentence"], numbers=False),
    )
    return dialogue, slots


def _keep(dialogue: Dialogue, classes: int) -> Dialogue | None:
    """Only the utterances labelled below ``classes`` (iemocap_4); None when none is left."""
    keep = dialogue.labels < classes
    if keep.all():
        return dialogue
    if not keep.any():
        return None
    idx = np.flatnonzero(keep)
    return Dialogue(
        id=dialogue.id,
        features={m: np.ascontiguousarray(x[idx]) for m, x in dialogue.features.items()},
        labels=dialogue.labels[idx],
        speakers=dialogue.speakers[idx],
        utterance_ids=[dialogue.utterance_ids[i] for i in idx],
        sentences=[dialogue.sentences[i] for i in idx],
    )


def read_dialogues(
    path: str | Path, dataset: str, valid_fraction: float = 0.1, seed: int = 0, folds: int = 0, fold: int = 0
) -> DialogueCorpus:
    """Load and validate an IEMOCAP / MELD dialogue pickle; raises ``FeatureFileError`` naming file, dialogue, key.

    ``dataset`` is one of ``DIALOGUE_DATASETS``. The valid split is ``valid_fraction`` of the training
    dialogues (at least one), picked with ``numpy.random.default_rng(seed)`` over their sorted ids; the
    test split is ``testVid``. Dims and the number of speakers come from the file.
    ``folds`` >= 2: fold ``fold`` of the leave-groups-out folds over trainVid + testVid instead (module
    docstring: IEMOCAP sessions, MELD dialogues); the valid split is then ``valid_fraction`` of the dialogues
    outside the test groups, and ``check_no_leak`` runs on the result.
    """
    path = Path(path)
    if dataset not in DIALOGUE_DATASETS:
        raise ValueError(f"unknown dialogue dataset {dataset!r}: one of {', '.join(DIALOGUE_DATASETS)}")
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must lie in (0, 1), got {valid_fraction}")
    if folds and not (folds >= 2 and 0 <= fold < folds):
        raise ValueError(f"folds must be 0 (the file's split) or >= 2 with 0 <= fold < folds, got {folds}, {fold}")
    layout = LAYOUTS[dataset]
    entries, keys = _top(path, safe_load(path, encoding="latin1"), layout)
    split_ids = _split_ids(path, entries, keys["videoIDs"], layout)
    found: dict[str, tuple[int, str]] = {}  # modality -> (D, first dialogue)
    slots: tuple[int, str] | None = None  # (speaker one-hot length, first dialogue)
    dialogues: dict[str, Dialogue] = {}
    for did in sorted(keys["videoIDs"]):  # every dialogue is validated, also one in neither split
        raw = {name: entries[name][by_str[did]] for name, by_str in keys.items()}
        dialogues[did], width = _dialogue(path, raw, did, dataset, found)
        slots = slots or (width, did)
        if width != slots[0]:
            raise FeatureFileError(
                f"{path}: dialogue {did!r}, videoSpeakers: one-hot lists of length {width}, dialogue {slots[1]!r}'s "
                f"have length {slots[0]}"
            )
    assert slots is not None  # _top: videoIDs holds a dialogue
    dims: dict[str, int] = {m: found[m][0] for m in ("text", "audio", "video") if m in found}
    classes = len(CLASS_NAMES[dataset])
    kept = {did: d for did, d in ((k, _keep(v, classes)) for k, v in dialogues.items()) if d is not None}
    if folds:
        pool = sorted(d for d in split_ids["trainVid"] + split_ids["testVid"] if d in kept)
        ids, about = fold_split_ids(path, dataset, pool, folds, fold, valid_fraction, seed)
        check_no_leak(ids, dataset)
        splits = {name: [kept[d] for d in v] for name, v in ids.items()}
        return DialogueCorpus(dataset, path, splits, dims, slots[0], CLASS_NAMES[dataset], about)
    train = [d for d in split_ids["trainVid"] if d in kept]
    test = [kept[d] for d in split_ids["testVid"] if d in kept]
    if len(train) < 2 or not test:
        raise FeatureFileError(
            f"{path}: {len(train)} training and {len(test)} test dialogues with {dataset} labels; "
            "expected at least 2 and 1 (the valid split comes from the training dialogues)"
        )
    chosen = _valid_indices(len(train), valid_fraction, seed)
    splits = {
        "train": [kept[d] for i, d in enumerate(train) if i not in chosen],
        "valid": [kept[d] for i, d in enumerate(train) if i in chosen],
        "test": test,
    }
    return DialogueCorpus(dataset, path, splits, dims, slots[0], CLASS_NAMES[dataset])


def _valid_indices(n: int, valid_fraction: float, seed: int) -> set[int]:
    """Which of ``n`` training dialogues (sorted ids) are the valid split: ``valid_fraction`` of them, at least
    one and at most n - 1, drawn with ``numpy.random.default_rng(seed)``."""
    n_valid = min(max(1, int(valid_fraction * n + 0.5)), n - 1)
    return set(np.random.default_rng(seed).choice(n, size=n_valid, replace=False).tolist())


def fold_group(dataset: str, dialogue_id: str) -> str | None:
    """What a fold keeps whole: the IEMOCAP session of a dialogue ('Ses01F_impro01' -> 'Ses01'; None when the
    id names none), for MELD the dialogue itself."""
    if LAYOUTS[dataset] != "iemocap":
        return dialogue_id
    m = SESSION.match(dialogue_id)
    return f"Ses{int(m.group(1)):02d}" if m else None


def fold_split_ids(
    path: Path, dataset: str, ids: list[str], folds: int, fold: int, valid_fraction: float = 0.1, seed: int = 0
) -> tuple[dict[str, list[str]], dict]:
    """Fold ``fold`` of ``folds`` over the dialogue ``ids``: ({"train", "valid", "test": sorted ids}, what the
    fold is: folds, fold, group, groups, test_groups). Test = the fold's chunk of the groups (``fold_group``);
    valid = ``valid_fraction`` of the other dialogues (``_valid_indices``); train = the rest."""
    group = "session" if LAYOUTS[dataset] == "iemocap" else "dialogue"
    groups = {d: fold_group(dataset, d) for d in ids}
    unnamed = [d for d, g in groups.items() if g is None]
    if unnamed:
        raise FeatureFileError(
            f"{path}: dialogue {unnamed[0]!r} names no session ({len(unnamed)} such); session folds need IEMOCAP's "
            "dialogue ids ('Ses01F_impro01': session 1)"
        )
    names = sorted({g for g in groups.values() if g is not None})  # (none is None: checked above)
    if LAYOUTS[dataset] != "iemocap":  # dialogues: a seeded permutation (ids carry no order worth keeping)
        names = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    if folds > len(names):
        raise FeatureFileError(
            f"{path}: {folds} folds need at least {folds} {group}s; the file has {len(names)} with {dataset} labels"
        )
    test_groups = {names[i] for i in np.array_split(np.arange(len(names)), folds)[fold]}
    rest = [d for d in ids if groups[d] not in test_groups]
    if len(rest) < 2:
        raise FeatureFileError(
            f"{path}: fold {fold} of {folds} leaves {len(rest)} dialogue(s) outside the test {group}s; expected at "
            "least 2 (train and valid)"
        )
    chosen = _valid_indices(len(rest), valid_fraction, seed)
    split = {
        "train": [d for i, d in enumerate(rest) if i not in chosen],
        "valid": [d for i, d in enumerate(rest) if i in chosen],
        "test": [d for d in ids if groups[d] in test_groups],
    }
    about = {"folds": folds, "fold": fold, "group": group, "groups": len(names), "test_groups": sorted(test_groups)}
    return split, about


def check_no_leak(split_ids: dict[str, list[str]], dataset: str) -> None:
    """Raise ``ValueError`` when a dialogue id is in two splits, or (IEMOCAP) a session of the test split is also
    in train or valid: the test dialogues' speakers would have been seen in training."""
    where: dict[str, str] = {}
    for name, ids in split_ids.items():
        for d in ids:
            if d in where:
                raise ValueError(f"leak: dialogue {d!r} is in both the {where[d]} and the {name} split")
            where[d] = name
    if LAYOUTS[dataset] == "iemocap":
        sessions = {name: {fold_group(dataset, d) for d in ids} for name, ids in split_ids.items()}
        seen = sessions.get("train", set()) | sessions.get("valid", set())
        shared = sorted(str(s) for s in sessions.get("test", set()) & seen)
        if shared:
            raise ValueError(
                f"leak: session {shared[0]} is in the test split and in train / valid ({len(shared)} such)"
            )


def check_modalities(corpus: DialogueCorpus, modalities: tuple[str, ...]) -> None:
    """Raise ``FeatureFileError`` when ``corpus``'s file lacks one of ``modalities`` (MELD's 9-tuple: video)."""
    for modality in modalities:
        if modality in corpus.dims:
            continue
        have = ", ".join(m for m in ("text", "audio", "video") if m in corpus.dims)
        letters = "".join(m[0] for m in ("text", "audio", "video") if m in corpus.dims)
        if modality == "video" and LAYOUTS.get(corpus.name) == "meld":
            raise FeatureFileError(
                f"{corpus.path}: the MELD file has no visual features (DialogueRNN's 9-tuple: {have}); "
                f"use --modalities {letters}, or a 10-tuple file with videoVisual"
            )
        raise FeatureFileError(
            f"{corpus.path}: the file has no {modality} features (it has {have}); use --modalities {letters}"
        )
