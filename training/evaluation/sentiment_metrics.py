"""Sentiment-regression metrics with the definitions of MMSA 2.2.1 (``src/MMSA/utils/metricsTop.py``,
``MetricsTop.__eval_mosei_regression`` / ``__eval_sims_regression``), on the same library calls: scikit-learn's
``accuracy_score`` and ``f1_score(average="weighted")``, ``np.corrcoef`` for Pearson's r. Written from
those definitions, so a number here means what it means in a paper's MOSI / MOSEI / SIMS table.

``regression_metrics(pred, truth, dataset)``: one continuous prediction per sample against its label.

MOSI / MOSEI (labels in [-3, 3]; ``dataset="mosi"`` or ``"mosei"``, MMSA sends both to the same function):

==================  =====================================================================================
key (MMSA's name)   definition
==================  =====================================================================================
``Has0_acc_2``      accuracy of ``pred >= 0`` against ``truth >= 0`` (zero counts as positive), all samples
``Has0_F1_score``   weighted F1 (``f1_score(average="weighted")``, weights = true support) of the same
``Non0_acc_2``      accuracy of ``pred > 0`` against ``truth > 0`` over the samples with ``truth != 0``
``Non0_F1_score``   weighted F1 of the same; both Non0 entries are NaN when every ``truth`` is 0
``Mult_acc_5``      ``mean(round(clip(pred, -2, 2)) == round(clip(truth, -2, 2)))`` (5 classes)
``Mult_acc_7``      ``mean(round(clip(pred, -3, 3)) == round(clip(truth, -3, 3)))`` (7 classes)
``MAE``             ``mean(|pred - truth|)``, unclipped
``MSE``             ``mean((pred - truth)**2)``, unclipped (not MMSA's: our training loss, same arrays as MAE)
``Corr``            Pearson's r, ``np.corrcoef(pred, truth)[0, 1]``, unclipped
==================  =====================================================================================

``round`` is ``np.round``: round half to even, so 2.5 -> 2, -2.5 -> -2, 0.5 -> 0, 1.5 -> 2 (as in MMSA).
MMSA also computes a clipped-to-[-1, 1] ``Mult_acc_3`` there but does not report it; neither do we.

SIMS / SIMS v2 (labels in [-1, 1]; ``dataset="sims"`` or ``"simsv2"``): both arrays are first clipped to
[-1, 1], and every entry below is on the clipped arrays (MAE and Corr included, as in MMSA). A value x is in
bin i when ``edges[i] < x <= edges[i + 1]`` (left-open, right-closed), compared in the array's own float dtype
(MMSA's tensors are float32: a float32 label 0.1 is compared with float32 0.1 and lands in the middle bin):

==================  =====================================================================================
``Mult_acc_2``      accuracy over 2 bins, edges (-1.01, 0, 1.01): [-1, 0] negative, (0, 1] positive
``Mult_acc_3``      3 bins, edges (-1.01, -0.1, 0.1, 1.01): [-1, -0.1], (-0.1, 0.1], (0.1, 1]
``Mult_acc_5``      5 bins, edges (-1.01, -0.7, -0.1, 0.1, 0.7, 1.01)
``F1_score``        weighted F1 over the 2 bins of ``Mult_acc_2``
``MAE``             ``mean(|pred - truth|)``, clipped
``MSE``             ``mean((pred - truth)**2)``, clipped (not MMSA's; same arrays as MAE)
``Corr``            Pearson's r of the clipped arrays
==================  =====================================================================================

Choices (where this module differs from a verbatim run of MMSA's code):

* Values are plain unrounded Python floats. MMSA's 2.2.1 returns ``round(x, 4)``; round in tables instead, so
  that differences smaller than 1e-4 between runs stay visible and averages over seeds are not of rounded values.
* ``Corr`` is 0.0, not NaN, when ``pred`` or ``truth`` is constant (zero spread; one sample included): a
  constant prediction has no linear relation to the labels, numpy's 0/0 there gives NaN plus a RuntimeWarning
  (MMSA would write nan), and NaN silently loses every ``max`` / "best epoch" comparison and is not valid JSON.
  NaN inputs are not checked for: they give NaN MAE / MSE / Corr.
* MAE, MSE and Corr are computed in float64 (MMSA: MAE in the tensor's float32, then cast), a difference in the
  7th significant digit at most.
* Inputs: anything ``np.asarray`` takes, or a torch tensor (detached and moved to the CPU here); flattened,
  as MMSA's ``view(-1)``. Integer inputs are read as float64. Empty or mismatched inputs raise ``ValueError``.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

# Columns a table shows first, per dataset family (papers report Acc-2 / F1 / MAE / Corr / Acc-7 for MOSI and
# MOSEI, Acc-2 / Acc-3 / Acc-5 / F1 / MAE / Corr for SIMS).
HEADLINE = ("Corr", "MAE", "Non0_acc_2", "Mult_acc_7")
SIMS_HEADLINE = ("Corr", "MAE", "Mult_acc_2", "Mult_acc_5")
# Every other key is an accuracy, F1 or correlation: higher is better.
LOWER_IS_BETTER = frozenset({"MAE", "MSE"})

MOSEI_DATASETS = ("mosi", "mosei")
SIMS_DATASETS = ("sims", "simsv2")
# MMSA's bin edges for SIMS (left-open, right-closed bins; -1.01 / 1.01 so that -1 and 1 fall inside).
SIMS_EDGES = {
    2: (-1.01, 0.0, 1.01),
    3: (-1.01, -0.1, 0.1, 1.01),
    5: (-1.01, -0.7, -0.1, 0.1, 0.7, 1.01),
}


def headline(dataset: str) -> tuple[str, ...]:
    """The columns a table shows first for ``dataset`` (``HEADLINE`` or ``SIMS_HEADLINE``)."""
    return SIMS_HEADLINE if _family(dataset) == "sims" else HEADLINE


def regression_metrics(pred, truth, dataset: str = "mosei") -> dict[str, float]:
    """MMSA's regression metrics of ``pred`` against ``truth`` (see the module docstring for every key)."""
    family = _family(dataset)
    p, t = _vector(pred, "pred"), _vector(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred has {p.size} values, truth {t.size}")
    if p.size == 0:
        raise ValueError("no samples")
    return _sims(p, t) if family == "sims" else _mosei(p, t)


def _family(dataset: str) -> str:
    key = dataset.lower()
    if key in MOSEI_DATASETS:
        return "mosei"
    if key in SIMS_DATASETS:
        return "sims"
    raise ValueError(f"unknown dataset {dataset!r}: one of {MOSEI_DATASETS + SIMS_DATASETS}")


def _vector(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.floating):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
            raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
        a = a.astype(np.float64)
    return a.reshape(-1)


def _accuracy_f1(pred_classes: np.ndarray, true_classes: np.ndarray) -> tuple[float, float]:
    """(accuracy, weighted F1) as MMSA calls them; zero_division=0 is scikit-learn's default value ("warn"
    also gives 0.0), without the warning."""
    acc = accuracy_score(true_classes, pred_classes)
    f1 = f1_score(true_classes, pred_classes, average="weighted", zero_division=0)
    return float(acc), float(f1)


def _rounded_accuracy(p: np.ndarray, t: np.ndarray, bound: float) -> float:
    """Share of samples whose clipped-to-[-bound, bound] values round (half to even) to the same integer."""
    return float(np.mean(np.round(np.clip(p, -bound, bound)) == np.round(np.clip(t, -bound, bound))))


def _errors(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
    """MAE, MSE and Pearson's r (0.0 when either side is constant) in float64."""
    p64, t64 = p.astype(np.float64), t.astype(np.float64)
    diff = p64 - t64
    if np.ptp(p64) == 0 or np.ptp(t64) == 0:
        corr = 0.0  # zero spread: numpy would give nan (0/0) with a RuntimeWarning; see the module docstring
    else:
        corr = float(np.corrcoef(p64, t64)[0, 1])
    return {"MAE": float(np.mean(np.abs(diff))), "MSE": float(np.mean(diff**2)), "Corr": corr}


def _mosei(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
    has0_acc, has0_f1 = _accuracy_f1(p >= 0, t >= 0)
    nonzero = t != 0
    if nonzero.any():
        non0_acc, non0_f1 = _accuracy_f1(p[nonzero] > 0, t[nonzero] > 0)
    else:  # every label is neutral: no sample to score (MMSA's code would fail on the empty index)
        non0_acc = non0_f1 = math.nan
    return {
        "Has0_acc_2": has0_acc,
        "Has0_F1_score": has0_f1,
        "Non0_acc_2": non0_acc,
        "Non0_F1_score": non0_f1,
        "Mult_acc_5": _rounded_accuracy(p, t, 2.0),
        "Mult_acc_7": _rounded_accuracy(p, t, 3.0),
    } | _errors(p, t)


def sims_bins(x: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index (0 .. n_bins - 1) of each value of ``x`` (already clipped to [-1, 1]) under MMSA's SIMS edges:
    i where ``edges[i] < x <= edges[i + 1]``, compared in ``x``'s own float dtype."""
    x = np.asarray(x)
    edges = np.asarray(SIMS_EDGES[n_bins], dtype=x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64)
    # searchsorted(side="left") is the first j with edges[j] >= x, i.e. i + 1 for edges[i] < x <= edges[i + 1]
    return np.searchsorted(edges, x, side="left") - 1


def _sims(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
    p, t = np.clip(p, -1.0, 1.0), np.clip(t, -1.0, 1.0)
    bins = {n: (sims_bins(p, n), sims_bins(t, n)) for n in SIMS_EDGES}
    out = {f"Mult_acc_{n}": float(np.mean(bp == bt)) for n, (bp, bt) in bins.items()}
    out["F1_score"] = _accuracy_f1(*bins[2])[1]
    return out | _errors(p, t)
