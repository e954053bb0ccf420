"""RAVDESS reader and leak-free splits (torch-free).

File names are ``MM-VC-EE-II-SS-RR-AA.ext``: modality (01 audio-video, 02 video-only, 03 audio-only),
vocal channel (01 speech, 02 song), emotion (01..08, see contract.labels.EMOTIONS_8), intensity
(01 normal, 02 strong; neutral has no strong), statement (01, 02), repetition (01, 02), actor
(01..24; odd = male, even = female). Files live in ``Actor_AA/`` folders, possibly nested one level
deeper as unpacked from the official zips (``Video_Speech_Actor_01/Actor_01/...``).

Scanning never decodes: unreadable files are found later by the cache, which records a ``Problem``.
"""

from __future__ import annotations

import os
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from avemo.contract.labels import EMOTIONS_8, label_index, label_names

MEDIA_EXTENSIONS = {".mp4": (1, 2), ".wav": (3,)}  # extension -> modalities it may hold
_ACTOR_DIR = re.compile(r"^Actor_(\d{1,2})$")
_RANGES = {  # field -> (min, max)
    "modality": (1, 3),
    "vocal_channel": (1, 2),
    "emotion": (1, 8),
    "intensity": (1, 2),
    "statement": (1, 2),
    "repetition": (1, 2),
    "actor": (1, 99),
}


@dataclass(frozen=True)
class RavdessName:
    modality: int
    vocal_channel: int
    emotion: int
    intensity: int
    statement: int
    repetition: int
    actor: int

    @classmethod
    def parse(cls, filename) -> RavdessName:
        """Parse ``01-01-03-02-01-01-12.mp4`` (a name or path; extension optional). ValueError says why."""
        name = Path(str(filename)).name
        stem = name.split(".", 1)[0]
        parts = stem.split("-")
        if len(parts) != len(_RANGES):
            raise ValueError(f"{name!r}: expected 7 dash-separated fields MM-VC-EE-II-SS-RR-AA, got {len(parts)}")
        values = {}
        for (fname, (lo, hi)), text in zip(_RANGES.items(), parts):
            if not (text.isascii() and text.isdigit()):
                raise ValueError(f"{name!r}: field {fname} = {text!r} is not numeric")
            v = int(text)
            if not lo <= v <= hi:
                raise ValueError(f"{name!r}: field {fname} = {v:02d} is out of range {lo:02d}..{hi:02d}")
            values[fname] = v
        if values["emotion"] == 1 and values["intensity"] == 2:
            raise ValueError(f"{name!r}: neutral (emotion 01) has no strong intensity (02) in RAVDESS")
        return cls(**values)

    @property
    def stem(self) -> str:
        """The canonical file name without extension, e.g. ``01-01-03-02-01-01-12``."""
        return "-".join(f"{getattr(self, f):02d}" for f in _RANGES)

    @property
    def emotion_name(self) -> str:
        return EMOTIONS_8[self.emotion - 1]

    @property
    def gender(self) -> str:
        return "male" if self.actor % 2 == 1 else "female"

    @property
    def recording_key(self) -> str:
        """All fields but modality: the .wav and .mp4 of one recording share it."""
        return self.stem.split("-", 1)[1]


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": str(self.path), "reason": self.reason}


@dataclass
class Item:
    path: Path
    name: RavdessName
    label: int
    label_name: str

    @property
    def actor(self) -> int:
        return self.name.actor

    @property
    def recording_key(self) -> str:
        return self.name.recording_key


def make_item(path, name: RavdessName, num_classes: int = 8) -> Item:
    label = label_index(name.emotion_name, num_classes)
    return Item(Path(path), name, label, label_names(num_classes)[label])


def _actor_dirs(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if _ACTOR_DIR.match(here.name):
            found.append(here)
            dirnames[:] = []  # RAVDESS actor folders are flat
    return found


def scan(root, modality: int | None = 1, vocal_channel: int | None = 1, num_classes: int = 8):
    """Find RAVDESS files under ``root`` -> (items sorted by actor and name, problems).

    modality: 1 audio-video (.mp4), 2 video-only (.mp4), 3 audio-only (.wav), None = all.
    vocal_channel: 1 speech, 2 song, None = both. Malformed names, extension/modality mismatches,
    actor fields disagreeing with their ``Actor_XX`` folder, media outside actor folders and
    duplicate file names are reported as problems; other files (.json, .txt, hidden) are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"RAVDESS root {root} is not a directory")
    label_names(num_classes)  # validates num_classes
    items: list[Item] = []
    problems: list[Problem] = []
    seen: dict[str, Path] = {}
    actor_dirs = _actor_dirs(root)
    if not actor_dirs:
        problems.append(Problem(str(root), "no Actor_XX folders found"))
    in_actor_dirs = set(actor_dirs)
    for dirpath, dirnames, filenames in os.walk(root):  # media outside Actor_XX folders
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and Path(dirpath, d) not in in_actor_dirs]
        for f in sorted(filenames):
            if not f.startswith(".") and Path(f).suffix.lower() in MEDIA_EXTENSIONS:
                problems.append(Problem(str(Path(dirpath, f)), "media file outside an Actor_XX folder"))
    for adir in actor_dirs:
        match = _ACTOR_DIR.match(adir.name)
        assert match is not None  # _actor_dirs lists matching folders only
        folder_actor = int(match.group(1))
        for path in sorted(p for p in adir.iterdir() if p.is_file() and not p.name.startswith(".")):
            ext = path.suffix.lower()
            if ext not in MEDIA_EXTENSIONS:
                continue
            try:
                name = RavdessName.parse(path.name)
            except ValueError as e:
                problems.append(Problem(str(path), f"malformed RAVDESS name: {e}"))
                continue
            if name.actor != folder_actor:
                problems.append(Problem(str(path), f"actor field {name.actor:02d} disagrees with folder {adir.name}"))
                continue
            if name.modality not in MEDIA_EXTENSIONS[ext]:
                problems.append(Problem(str(path), f"modality {name.modality:02d} is not valid for a {ext} file"))
                continue
            if path.name in seen:
                problems.append(Problem(str(path), f"duplicate of {seen[path.name]}"))
                continue
            seen[path.name] = path
            if modality is not None and name.modality != modality:
                continue
            if vocal_channel is not None and name.vocal_channel != vocal_channel:
                continue
            items.append(make_item(path, name, num_classes))
    items.sort(key=lambda it: (it.actor, it.path.name, str(it.path)))
    return items, problems


# ------------------------------------------------------------------------------------------ splits
SPLIT_MODES = ("actor", "kfold", "stratified")  # how ``make_splits`` divides the items


def make_splits(items, mode: str = "actor", *, folds: int = 5, fold: int = 0, seed: int = 0) -> dict[str, list[Item]]:
    """{"train", "val", "test"} item lists: ``default_actor_split`` ("actor"), ``kfold_by_actor``
    (fold ``fold`` of ``folds``) or ``stratified_split`` (by recording, with ``seed``)."""
    if mode == "actor":
        return split_by_actors(items, *default_actor_split(actors_of(items)))
    if mode == "kfold":
        return kfold_by_actor(items, folds, fold)
    if mode == "stratified":
        return stratified_split(items, seed=seed)
    raise ValueError(f"split mode must be one of {', '.join(SPLIT_MODES)}, got {mode!r}")


def actors_of(items) -> list[int]:
    return sorted({it.actor for it in items})


def split_by_actors(items, train_actors, val_actors, test_actors) -> dict[str, list[Item]]:
    """Fixed actor lists -> {"train", "val", "test"}; items of unlisted actors are left out."""
    lists = {"train": set(train_actors), "val": set(val_actors), "test": set(test_actors)}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        if lists[a] & lists[b]:
            raise ValueError(f"actors {sorted(lists[a] & lists[b])} are in both {a} and {b}")
    return {k: [it for it in items if it.actor in actors] for k, actors in lists.items()}


def _balanced_take(pools: dict[str, list[int]], m: int) -> list[int]:
    """Take m actors from the male/female pools (highest numbers first), alternating genders."""
    out: list[int] = []
    counts = {"male": 0, "female": 0}
    for _ in range(m):
        cands = [g for g in pools if pools[g]]
        g = min(cands, key=lambda g: (counts[g], -len(pools[g]), -pools[g][0]))
        out.append(pools[g].pop(0))
        counts[g] += 1
    return sorted(out)


def _pools(actors) -> dict[str, list[int]]:
    actors = sorted(set(actors), reverse=True)
    return {"male": [a for a in actors if a % 2 == 1], "female": [a for a in actors if a % 2 == 0]}


def default_actor_split(actors) -> tuple[list[int], list[int], list[int]]:
    """Deterministic gender-balanced (train, val, test) actor lists; val and test ~ 1/6 each.

    24 actors -> test 21-24, val 17-20; 10 actors -> test 9-10, val 7-8; 3 actors -> 1/1/1.
    """
    actors = sorted(set(int(a) for a in actors))
    if len(actors) < 3:
        raise ValueError(f"an actor split needs >= 3 actors, got {len(actors)}; use stratified_split instead")
    m = max(1, round(len(actors) / 6))
    pools = _pools(actors)
    test = _balanced_take(pools, m)
    val = _balanced_take(pools, m)
    train = sorted(set(actors) - set(test) - set(val))
    return train, val, test


def kfold_by_actor(items, k: int, fold: int, val_fraction: float = 0.2) -> dict[str, list[Item]]:
    """Leave-actors-out fold ``fold`` of ``k``: test = that fold's actors (gender-interleaved
    round robin, so every actor is a test actor in exactly one fold), val = a deterministic,
    gender-balanced ``val_fraction`` (at least one) of the remaining actors, train = the rest."""
    actors = actors_of(items)
    if not 2 <= k <= len(actors):
        raise ValueError(f"k must be in 2..{len(actors)} (number of actors), got {k}")
    if not 0 <= fold < k:
        raise ValueError(f"fold must be in 0..{k - 1}, got {fold}")
    order = [a for a in actors if a % 2 == 1] + [a for a in actors if a % 2 == 0]
    test = sorted(a for i, a in enumerate(order) if i % k == fold)
    rest = [a for a in actors if a not in test]
    if len(rest) < 2:
        raise ValueError(f"fold {fold} of {k} leaves {len(rest)} actor(s) for train+val; need >= 2")
    n_val = min(len(rest) - 1, max(1, round(val_fraction * len(rest))))
    val = _balanced_take(_pools(rest), n_val)
    train = sorted(set(rest) - set(val))
    return split_by_actors(items, train, val, test)


def stratified_split(items, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0):
    """Per-label random split of *recordings* (``recording_key`` groups, so a recording's .wav and
    .mp4 never land in two splits). Actors are shared between splits: use only when an actor split
    is impossible (few actors)."""
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"need 0 <= val_fraction, test_fraction and a sum < 1, got {val_fraction}, {test_fraction}")
    groups: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        groups[it.recording_key].append(it)
    by_label: dict[int, list[str]] = defaultdict(list)
    for key in sorted(groups):
        by_label[groups[key][0].label].append(key)
    rng = random.Random(seed)
    splits: dict[str, list[Item]] = {"train": [], "val": [], "test": []}
    for label in sorted(by_label):
        keys = by_label[label]
        rng.shuffle(keys)
        n_test = round(len(keys) * test_fraction)
        n_val = round(len(keys) * val_fraction)
        while n_test + n_val >= len(keys) and n_test + n_val > 0:  # keep >= 1 recording for train
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
        for i, key in enumerate(keys):
            split = "test" if i < n_test else "val" if i < n_test + n_val else "train"
            splits[split].extend(groups[key])
    for v in splits.values():
        v.sort(key=lambda it: (it.actor, it.path.name, str(it.path)))
    return splits


def check_no_leak(splits: dict, by_actor: bool = False) -> None:
    """Raise ValueError if a recording (or, with ``by_actor``, an actor) occurs in two splits."""
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = {it.recording_key for it in splits[a]} & {it.recording_key for it in splits[b]}
            if shared:
                raise ValueError(f"recordings leak between {a} and {b}: {sorted(shared)[:5]} ({len(shared)} total)")
            if by_actor:
                both = set(actors_of(splits[a])) & set(actors_of(splits[b]))
                if both:
                    raise ValueError(f"actors {sorted(both)} are in both {a} and {b}")


def split_summary(splits: dict, num_classes: int = 8) -> dict:
    """JSON-friendly counts per split: items, actors and items per label name."""
    names = label_names(num_classes)
    out = {}
    for split, its in splits.items():
        per_label = {n: 0 for n in names}
        for it in its:
            per_label[it.label_name] += 1
        out[split] = {"items": len(its), "actors": actors_of(its), "per_label": per_label}
    return out
