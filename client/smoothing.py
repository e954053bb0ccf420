"""Smoothing of window probabilities over time, for the running (live) label and the clip label.

A spec string names the method (``--smooth`` on `avemo predict`, `avemo live` and `avemo app`):

    "none"        each window's own probabilities
    "ema:A"       exponential moving average, s_t = A * p_t + (1 - A) * s_(t-1), s_0 = p_0 (0 < A <= 1;
                  A = 0.5 halves a window's weight at every hop: with 1 s hops, a ~1.4 s half-life)
    "median:K"    per-class median of the last K windows (K >= 1), renormalised to sum to 1

All are causal (a smoothed value never uses later windows), so the live label and a file's timeline
agree. The clip label is the argmax of the mean of the smoothed window probabilities.
"""

from __future__ import annotations

from collections import deque

import numpy as np

DEFAULT_SMOOTHING = "ema:0.5"
METHODS = ("none", "ema", "median")


def parse_smoothing(spec: str) -> tuple[str, float]:
    """ "ema:0.5" -> ("ema", 0.5); raises ValueError naming the accepted forms."""
    spec = (spec or "none").strip().lower()
    method, _, arg = spec.partition(":")
    expected = 'expected "none", "ema:A" with 0 < A <= 1, or "median:K" with an integer K >= 1'
    if method == "none" and not arg:
        return "none", 0.0
    try:
        value = float(arg)
    except ValueError:
        raise ValueError(f"bad smoothing {spec!r}: {expected}") from None
    if method == "ema" and 0.0 < value <= 1.0:
        return "ema", value
    if method == "median" and value >= 1 and value == int(value):
        return "median", value
    raise ValueError(f"bad smoothing {spec!r}: {expected}")


class Smoother:
    """Feed window probabilities in time order; ``update`` returns the smoothed probabilities."""

    def __init__(self, spec: str = DEFAULT_SMOOTHING):
        self.spec = spec
        self.method, self.value = parse_smoothing(spec)
        self._state: np.ndarray | None = None
        self._recent: deque = deque(maxlen=int(self.value) if self.method == "median" else 1)

    def update(self, probs) -> np.ndarray:
        p = np.asarray(probs, np.float64)  # [C]
        if self.method == "ema":
            self._state = p if self._state is None else self.value * p + (1.0 - self.value) * self._state
            return self._state.copy()
        if self.method == "median":
            self._recent.append(p)
            m = np.median(np.stack(self._recent), axis=0)
            total = m.sum()
            return m / total if total > 0 else p
        return p

    def reset(self) -> None:
        self._state = None
        self._recent.clear()


def make_smoother(spec: str = DEFAULT_SMOOTHING) -> Smoother:
    return Smoother(spec)


def smooth_sequence(probs, spec: str = DEFAULT_SMOOTHING) -> np.ndarray:
    """[T, C] window probabilities in time order -> [T, C] smoothed."""
    smoother = Smoother(spec)
    return np.stack([smoother.update(p) for p in np.asarray(probs)]) if len(probs) else np.zeros((0, 0))
