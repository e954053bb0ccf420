"""Load untrusted feature pickles without running their code.

A pickle is a small program: its GLOBAL / STACK_GLOBAL opcodes import any callable by name and its
REDUCE opcode calls it, so ``pickle.load`` on a file from the internet can run ``os.system(...)``
before a single byte of features is seen. The feature files we read (MMSA's ``aligned_50.pkl`` /
``unaligned_50.pkl``, the IEMOCAP / MELD dialogue tuples of the next issue) only ever hold numpy
arrays and scalars inside dicts, lists, tuples, sets, strings and numbers, so ``safe_load`` allows
exactly the few globals those need and refuses every other one by name, before it is imported.

The allowed names are resolved once from the installed numpy (both the numpy-1 ``numpy.core`` and the
numpy-2 ``numpy._core`` spellings map to the same functions): ``find_class`` never imports a module.

Every failure -- missing file, not a pickle, truncated, refused global, anything raised while
unpickling -- is one ``FeatureFileError`` naming the file, so the CLI can print one line instead of a
traceback.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np


class FeatureFileError(ValueError):
    """A feature file cannot be used: the message names the file and what is wrong (printed without traceback)."""


def _numpy_attr(modules: tuple[str, ...], name: str) -> Any:
    """``name`` from the first of ``modules`` that has it (numpy 2 spells numpy.core as numpy._core)."""
    for module in modules:
        try:
            found = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if found is not None:
            return found
    raise ImportError(f"numpy has no {name} in {modules}")  # an unsupported numpy: fail at import, not on a file


_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")
_RECONSTRUCT = _numpy_attr(_MULTIARRAY, "_reconstruct")  # protocol <= 4 arrays: _reconstruct + __setstate__
_SCALAR = _numpy_attr(_MULTIARRAY, "scalar")  # numpy scalars (np.float32(1.0), np.int64(3))
_FROMBUFFER = _numpy_attr(_NUMERIC, "_frombuffer")  # protocol 5 arrays (in-band PickleBuffer)


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` restricted to the text encodings pickle itself writes (no bytes-to-bytes codecs)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode(encoding)


# (module, name) as written in the pickle -> the object handed to the unpickler. Nothing else loads.
ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    # containers and numbers that have no opcode of their own in older protocols
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("__builtin__", "set"): set,  # Python-2 pickles (protocol < 3) name the builtins module __builtin__
    ("__builtin__", "frozenset"): frozenset,
    ("__builtin__", "complex"): complex,
    ("__builtin__", "bytearray"): bytearray,
    ("collections", "OrderedDict"): dict,  # loads as a plain dict: key order is kept by dict anyway
    # protocol < 3 pickles of Python-3 bytes (numpy's raw data among them): _codecs.encode(text, "latin1")
    ("_codecs", "encode"): _codecs_encode,
}


def _refusal(path: Path, module: str, name: str) -> str:
    return (
        f"{path}: refuses to load {module}.{name}: a feature file may hold only numpy arrays, numbers, strings, "
        "lists, tuples, dicts and sets (a pickle can run code while it loads)"
    )


class _Refused(Exception):
    """Raised inside find_class; turned into FeatureFileError by safe_load (so it survives the C unpickler)."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` whose globals come only from ``ALLOWED``; anything else raises before import."""

    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED.get((module, name))
        if found is None:
            raise _Refused(module, name)
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed in a feature file")


def safe_load(path: str | Path, encoding: str = "ASCII") -> object:
    """Unpickle ``path`` allowing only numpy arrays / scalars and plain Python containers and numbers.

    ``encoding="latin1"`` reads Python-2 pickles (their str objects, numpy's raw data among them, are
    bytes). Raises ``FeatureFileError`` naming ``path`` for a missing or unreadable file, a file that
    is not a pickle, a truncated one, a refused global (``refuses to load posix.system ...``) and any
    other error raised while unpickling.
    """
    path = Path(path)
    try:
        f = open(path, "rb")  # closed by the `with f` below
    except FileNotFoundError:
        raise FeatureFileError(f"{path}: no such feature file") from None
    except IsADirectoryError:
        raise FeatureFileError(f"{path}: is a folder, not a feature file") from None
    except OSError as e:
        raise FeatureFileError(f"{path}: cannot open the feature file: {e.strerror or e}") from None
    with f:
        return _load(f, path, encoding)


def _load(f, path: Path, encoding: str) -> object:
    """Unpickle the open file ``f``; every error becomes a FeatureFileError naming ``path``."""
    try:
        if path.stat().st_size == 0:
            raise FeatureFileError(f"{path}: the feature file is empty")
        return RestrictedUnpickler(f, encoding=encoding).load()
    except FeatureFileError:
        raise
    except _Refused as e:
        raise FeatureFileError(_refusal(path, e.module, e.name)) from None
    except EOFError:
        raise FeatureFileError(f"{path}: the feature file is truncated (the pickle ends before its STOP)") from None
    except pickle.UnpicklingError as e:
        if "truncated" in str(e):
            raise FeatureFileError(f"{path}: the feature file is truncated ({e})") from None
        raise FeatureFileError(f"{path}: not a valid pickle ({e})") from None
    except MemoryError:
        raise FeatureFileError(f"{path}: not enough memory to load the feature file") from None
    except Exception as e:  # a pickle can make the allowed constructors raise anything (bad dtype, bad shape ...)
        raise FeatureFileError(f"{path}: not a readable feature pickle ({type(e).__name__}: {e})") from None
