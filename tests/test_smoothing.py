"""client.smoothing: the documented methods, causal, and bad specs refused with the accepted forms."""

from __future__ import annotations

import numpy as np
import pytest

from avemo.client.smoothing import Smoother, parse_smoothing, smooth_sequence


def test_parse_accepts_the_documented_forms_and_refuses_others():
    assert parse_smoothing("none") == ("none", 0.0)
    assert parse_smoothing("EMA:0.25") == ("ema", 0.25)
    assert parse_smoothing("median:3") == ("median", 3.0)
    for bad in ("ema:0", "ema:1.5", "median:0", "median:2.5", "mean:3", "ema", "none:2"):
        with pytest.raises(ValueError, match="expected"):
            parse_smoothing(bad)


def test_ema_median_none_values():
    p = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(smooth_sequence(p, "none"), p)
    np.testing.assert_allclose(smooth_sequence(p, "ema:0.5")[:, 0], [1.0, 0.5, 0.25, 0.625])
    med = smooth_sequence(p, "median:3")
    np.testing.assert_allclose(med[2], [0.0, 1.0])  # median of windows 0..2
    np.testing.assert_allclose(med.sum(axis=1), 1.0)  # renormalised


def test_smoothing_is_causal():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=10)
    for spec in ("ema:0.3", "median:4"):
        full = smooth_sequence(p, spec)
        changed = p.copy()
        changed[6:] = rng.dirichlet(np.ones(4), size=4)  # the future changes...
        np.testing.assert_allclose(smooth_sequence(changed, spec)[:6], full[:6])  # ...the past does not
    s = Smoother("ema:0.5")
    s.update([1.0, 0.0])
    s.reset()
    np.testing.assert_allclose(s.update([0.0, 1.0]), [0.0, 1.0])
