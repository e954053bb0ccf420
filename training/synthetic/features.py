"""Synthetic MMSA feature files (MOSI / MOSEI / SIMS layout) with a planted, three-way sentiment.

``write_mmsa_file`` writes a pickle that ``read_mmsa`` -- and MMSA's own loader -- reads like a
released ``aligned_50.pkl`` / ``unaligned_50.pkl``: the same keys, float32 features, zero padding after
each sample's length, ``-inf`` in a few audio entries, ``text_bert`` consistent with the text length,
``video$_$clip`` ids, labels on the annotators' grid. Tests, the demo and benchmarks get real-layout
files without downloading anything.

The sentiment is split between the modalities so that fusion matters: three independent latent
scores s_text, s_audio, s_video ~ N(0, 1) and a residual e ~ N(0, RESIDUAL^2) that no modality carries
(real labels are never fully predictable); the label is ``label_range / 2 * (s_t + s_a + s_v + e) /
sqrt(3 + RESIDUAL^2)``, clipped and rounded to the annotators' grid (multiples of 1/3 for MOSEI, 0.2 for
MOSI and SIMS), so every Acc-7 class is populated. Modality m encodes only s_m, as ``s_m * w_m`` (a fixed
random direction of its feature space, unit variance per dim) added to a random ~30 % of the sample's
valid steps, on top of unit per-step noise and a per-sample nuisance offset (a fixed low-rank subspace:
"speaker", no label). The best possible Pearson corr is then 0.53 with one modality, 0.75 with two,
0.92 with all three; a ridge fit on valid-step means reaches ~0.5 / ~0.72 / ~0.90 at the real dims.
SIMS files also get MMSA's unimodal labels ``regression_labels_T/A/V`` (from s_m alone).

The file is written by a small protocol-4 pickle writer that streams every big array in blocks of
``BLOCK`` samples (pickle.dump would first copy each array whole with ``tobytes``), so a MOSEI-size file
(~8 GB) is written with bounded memory. Everything is a function of ``seed`` and the block index.
"""

from __future__ import annotations

import math
import pickle
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike

from avemo.training.data.mmsa import DATASETS, MODALITIES, MODALITY_KEYS, SPLITS, UNIMODAL_KEYS

BLOCK = 256  # samples generated (and written) at a time
DEFAULT_SAMPLES = (600, 150, 150)  # train, valid, test
LABEL_STEP = {"mosi": 0.2, "mosei": 1 / 3, "sims": 0.2}  # averages of 5 (MOSI, SIMS) or 3 (MOSEI) annotators
ACTIVE = 0.3  # share of a sample's valid steps that carry its score
AMPLITUDE = {"text": 1.0, "audio": 1.0, "video": 1.0}  # signal per feature dim on an active step, noise sd = 1
RESIDUAL = 0.73  # sd of the sentiment part no modality carries: best fusion corr ~ sqrt(3 / (3 + 0.73^2)) = 0.92
NUISANCE_RANK = 4  # per-sample offset subspace (no label information); at most a quarter of the dims
NUISANCE_SCALE = 0.5
INF_SAMPLES = 0.03  # share of samples with one -inf audio entry, as COVAREP log features in MOSI / MOSEI, + 1 per block
_WORDS = "good bad movie really not very plot acting great boring love hate fine okay story".split()


# ------------------------------------------------------------------------ streaming protocol-4 pickle writer


class _LazyArray:
    """An array pickled like numpy's own ``__reduce_ex__(4)`` but whose bytes come block by block."""

    def __init__(self, shape: tuple[int, ...], dtype: DTypeLike, blocks: Callable[[], Iterator[np.ndarray]]) -> None:
        self.shape, self.dtype, self.blocks = shape, np.dtype(dtype), blocks
        self.nbytes = math.prod(shape) * self.dtype.itemsize


class _Writer:
    """Writes PROTO 4 opcodes for None / bool / int / float / str / bytes / tuple / list / dict / numpy values.

    No memo and no frames (both optional in protocol 4); big bytes go out as one BINBYTES8 opcode whose
    payload is streamed."""

    def __init__(self, f) -> None:
        self.f = f
        reduced = np.zeros(1, np.float32).__reduce_ex__(4)  # (_reconstruct, (ndarray, (0,), b'b'), ...)
        assert isinstance(reduced, tuple)  # (a str only for module-level singletons)
        func, args, state = reduced
        self.reconstruct, self.reconstruct_args, self.state_version = func, args, state[0]

    def dump(self, obj: object) -> None:
        self.f.write(pickle.PROTO + bytes([4]))
        self.save(obj)
        self.f.write(pickle.STOP)

    def save(self, obj: object) -> None:
        w = self.f.write
        if obj is None or isinstance(obj, bool):
            w({None: pickle.NONE, True: pickle.NEWTRUE, False: pickle.NEWFALSE}[obj])
        elif isinstance(obj, int | np.integer):
            obj = int(obj)
            w(pickle.BININT + struct.pack("<i", obj) if -(2**31) <= obj < 2**31 else self._long(obj))
        elif isinstance(obj, float | np.floating):
            w(pickle.BINFLOAT + struct.pack(">d", float(obj)))
        elif isinstance(obj, str):
            self._bytes_op(obj.encode("utf-8", "surrogatepass"), pickle.SHORT_BINUNICODE, pickle.BINUNICODE)
        elif isinstance(obj, bytes):
            self._bytes_op(obj, pickle.SHORT_BINBYTES, pickle.BINBYTES)
        elif isinstance(obj, tuple):
            w(pickle.MARK)
            for item in obj:
                self.save(item)
            w(pickle.TUPLE)
        elif isinstance(obj, list):
            w(pickle.EMPTY_LIST)
            for start in range(0, len(obj), 1000):
                w(pickle.MARK)
                for item in obj[start : start + 1000]:
                    self.save(item)
                w(pickle.APPENDS)
        elif isinstance(obj, dict):
            w(pickle.EMPTY_DICT + pickle.MARK)
            for key, value in obj.items():
                self.save(key)
                self.save(value)
            w(pickle.SETITEMS)
        elif isinstance(obj, np.dtype):
            self._reduce(*obj.__reduce__())
        elif isinstance(obj, np.ndarray):
            arr = np.ascontiguousarray(obj)
            self.save(_LazyArray(arr.shape, arr.dtype, lambda: iter([arr])))
        elif isinstance(obj, _LazyArray):
            self._array(obj)
        else:
            raise TypeError(f"cannot write {type(obj).__name__} into a feature file")

    def _long(self, value: int) -> bytes:
        data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        return pickle.LONG1 + bytes([len(data)]) + data

    def _bytes_op(self, data: bytes, short: bytes, long: bytes) -> None:
        if len(data) < 256:
            self.f.write(short + bytes([len(data)]) + data)
        else:
            self.f.write(long + struct.pack("<I", len(data)) + data)

    def _global(self, obj: type | Callable[..., object]) -> None:
        self.save(obj.__module__)
        self.save(obj.__qualname__)
        self.f.write(pickle.STACK_GLOBAL)

    def _reduce(self, func: Callable[..., object], args: tuple, state: object = None) -> None:
        self._global(func)
        self.f.write(pickle.MARK)
        for arg in args:
            if isinstance(arg, type):
                self._global(arg)
            else:
                self.save(arg)
        self.f.write(pickle.TUPLE + pickle.REDUCE)
        if state is not None:
            self.save(state)
            self.f.write(pickle.BUILD)

    def _array(self, arr: _LazyArray) -> None:
        self._reduce(self.reconstruct, self.reconstruct_args)
        w = self.f.write
        w(pickle.MARK)
        for item in (self.state_version, arr.shape, arr.dtype, False):
            self.save(item)
        w(pickle.BINBYTES8 + struct.pack("<Q", arr.nbytes))
        written = 0
        for block in arr.blocks():
            block = np.ascontiguousarray(block, dtype=arr.dtype)
            w(block.data.cast("B"))
            written += block.nbytes
        if written != arr.nbytes:
            raise RuntimeError(f"array stream wrote {written} bytes, announced {arr.nbytes}")
        w(pickle.TUPLE + pickle.BUILD)


# ------------------------------------------------------------------------------------ sentiment generator


def _quantise(z: np.ndarray, label_range: float, step: float) -> np.ndarray:
    """Continuous scores (sd 1) -> labels on the annotators' grid in [-label_range, label_range]."""
    y = np.round(z * label_range / 2 / step) * step  # sd label_range / 2: a spread over all Acc-7 classes
    return np.clip(y, -label_range, label_range).astype(np.float32)


def _modality_blocks(
    n: int, steps: int, dim: int, scores: np.ndarray, lengths: np.ndarray, code: dict, seed: list[int], audio: bool
) -> Callable[[], Iterator[np.ndarray]]:
    """Generator factory for one modality's [n, steps, dim] features, BLOCK samples at a time."""

    def blocks() -> Iterator[np.ndarray]:
        for b, start in enumerate(range(0, n, BLOCK)):
            rng = np.random.default_rng([*seed, b])
            s, length = scores[start : start + BLOCK], lengths[start : start + BLOCK]  # [B], [B]
            size = len(s)
            valid = np.arange(steps)[None, :] < length[:, None]  # [B, L]
            x = rng.standard_normal((size, steps, dim), dtype=np.float32)  # [B, L, D] per-step noise
            nuisance = code["nuisance"]  # [K, D]
            x += (rng.standard_normal((size, len(nuisance)), dtype=np.float32) @ nuisance)[:, None, :]
            keys = np.where(valid, rng.random((size, steps)), 2.0)  # [B, L]: padded steps sort last
            rank = np.argsort(np.argsort(keys, axis=1), axis=1)  # [B, L]
            active = rank < np.maximum(1, np.round(ACTIVE * length))[:, None]  # [B, L]: a random ~30 % of valid
            x += (active * s[:, None] * code["amplitude"])[:, :, None] * code["direction"][None, None, :]
            x *= valid[:, :, None]  # zero padding after each sample's length
            if audio:
                hit = np.flatnonzero((rng.random(size) < INF_SAMPLES) | (np.arange(size) == 0))  # a few -inf entries
                x[hit, rng.integers(0, length[hit]), rng.integers(0, dim, len(hit))] = -np.inf
            yield x

    return blocks


def _split(name: str, split: int, n: int, dims: dict, lens: dict, aligned: bool, codes: dict, seed: int) -> dict:
    rng = np.random.default_rng([seed, split])
    spec = DATASETS[name]
    scores = rng.standard_normal((n, 3))  # [N, 3]: s_text, s_audio, s_video
    residual = RESIDUAL * rng.standard_normal(n)  # [N]: in no modality
    z = (scores.sum(axis=1) + residual) / math.sqrt(3 + RESIDUAL**2)  # [N], sd 1
    label = _quantise(z, spec.label_range, LABEL_STEP[name])  # [N]
    lengths = {}
    for m in MODALITIES:
        low = max(2 if m == "text" else 1, lens[m] // 4)
        full = aligned and m != "text"
        lengths[m] = np.full(n, lens[m]) if full else rng.integers(low, lens[m] + 1, n)  # [N]
    tokens = lengths["text"]
    steps = np.arange(lens["text"])[None, :]  # [1, L]
    ids = rng.integers(1000, 30000, (n, lens["text"])).astype(np.float32)  # [N, L] BERT word pieces
    ids[:, 0] = 101  # [CLS]
    ids[np.arange(n), tokens - 1] = 102  # [SEP]
    mask = (steps < tokens[:, None]).astype(np.float32)  # [N, L]
    text_bert = np.stack([ids * mask, mask, np.zeros_like(mask)], axis=1)  # [N, 3, L]
    words = [" ".join(_WORDS[j] for j in rng.integers(0, len(_WORDS), max(1, t - 2))) for t in tokens]
    raw: dict = {"raw_text": words, "id": [f"{name}{split}v{i // 6:05d}$_${i % 6}" for i in range(n)]}
    for k, m in enumerate(MODALITIES):
        blocks = _modality_blocks(
            n, lens[m], dims[m], scores[:, k], lengths[m], codes[m], [seed, split, k], audio=m == "audio"
        )
        raw[MODALITY_KEYS[m]] = _LazyArray((n, lens[m], dims[m]), np.float32, blocks)
    raw["text_bert"] = text_bert
    if not aligned:
        raw["audio_lengths"] = lengths["audio"].astype(np.int64)
        raw["vision_lengths"] = lengths["video"].astype(np.int64)
    raw["annotations"] = [("Negative", "Neutral", "Positive")[int(c)] for c in np.sign(label) + 1]
    raw["classification_labels"] = (np.sign(label) + 1).astype(np.int64)
    raw["regression_labels"] = label
    if name == "sims":  # SIMS's unimodal annotations: each modality's own part of the sentiment
        for k, m in enumerate(MODALITIES):
            raw[UNIMODAL_KEYS[m]] = _quantise(scores[:, k], spec.label_range, LABEL_STEP[name])
    return raw


def write_mmsa_file(
    path: str | Path,
    dataset: str = "mosei",
    aligned: bool = False,
    samples: tuple[int, int, int] | None = None,
    seed: int = 0,
    dims: dict[str, int] | None = None,
    seq_lens: dict[str, int] | None = None,
) -> Path:
    """Write a synthetic MMSA pickle (protocol 4) at ``path``; returns the path.

    ``samples`` = (train, valid, test), default ``DEFAULT_SAMPLES`` (0 writes an empty split, which
    read_mmsa rejects). ``dims`` / ``seq_lens`` override the dataset's per modality (``{"text": 32}``);
    default lengths are the dataset's unaligned ones, or 50 everywhere when ``aligned``. Unaligned
    lengths vary uniformly in [L/4, L]; aligned files have full-length audio / video and varying text.
    """
    name = dataset.lower()
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: one of {', '.join(DATASETS)}")
    spec = DATASETS[name]
    dims = {**spec.dims, **(dims or {})}
    lens = {**(spec.aligned_lens if aligned else spec.unaligned_lens), **(seq_lens or {})}
    counts = DEFAULT_SAMPLES if samples is None else tuple(int(n) for n in samples)
    if len(counts) != 3 or min(counts) < 0:
        raise ValueError(f"samples must be (train, valid, test) counts >= 0, got {samples}")
    codes = {}
    for k, m in enumerate(MODALITIES):  # the meaning of each feature space, shared by the three splits
        rng = np.random.default_rng([seed, 99, k])
        direction = rng.standard_normal(dims[m]).astype(np.float32)
        rank = min(NUISANCE_RANK, max(1, dims[m] // 4))
        nuisance = rng.standard_normal((rank, dims[m])).astype(np.float32)
        codes[m] = {
            "direction": direction,  # [D], unit variance per dim: the same per-dim signal whatever D
            "nuisance": NUISANCE_SCALE * nuisance / math.sqrt(rank),  # [K, D]: offsets of sd ~0.5 per dim
            "amplitude": AMPLITUDE[m],
        }
    data = {split: _split(name, i, counts[i], dims, lens, aligned, codes, seed) for i, split in enumerate(SPLITS)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb", buffering=1 << 20) as f:
        _Writer(f).dump(data)
    tmp.replace(path)
    return path
