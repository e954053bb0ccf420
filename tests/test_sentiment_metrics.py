"""Sentiment-regression metrics (MMSA 2.2.1 definitions) against hand-computed answers, and the scikit-learn
``classification_metrics`` against the hand-written numpy implementation it replaced."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from avemo.training.evaluation.metrics import classification_metrics
from avemo.training.evaluation.sentiment_metrics import (
    HEADLINE,
    LOWER_IS_BETTER,
    SIMS_HEADLINE,
    headline,
    regression_metrics,
    sims_bins,
)

MOSEI_KEYS = [
    "Has0_acc_2",
    "Has0_F1_score",
    "Non0_acc_2",
    "Non0_F1_score",
    "Mult_acc_5",
    "Mult_acc_7",
    "MAE",
    "MSE",
    "Corr",
]
SIMS_KEYS = ["Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "MSE", "Corr"]


def pearson_by_hand(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    dx, dy = x - x.mean(), y - y.mean()
    return float((dx * dy).sum() / math.sqrt((dx * dx).sum() * (dy * dy).sum()))


# ---------------------------------------------------------------- MOSI / MOSEI
# 6 samples, two neutral labels (truth 0): s0 .. s5
TRUTH = [-3.0, -1.2, 0.0, 0.0, 1.6, 2.5]
PRED = [-3.4, 0.2, -0.4, 0.3, 1.4, 2.6]


def test_mosei_worked_example():
    m = regression_metrics(PRED, TRUTH, "mosei")
    assert list(m) == MOSEI_KEYS and all(type(v) is float for v in m.values())
    # Has0 (>= 0): truth [F F T T T T], pred [F T F T T T]: s1 and s2 wrong -> 4/6
    assert m["Has0_acc_2"] == pytest.approx(4 / 6)
    # class F: tp 1 (s0), fp 1 (s2), fn 1 (s1) -> F1 2/4; class T: tp 3, fp 1 (s1), fn 1 (s2) -> 6/8;
    # weighted by true support (2, 4): (2 * 0.5 + 4 * 0.75) / 6 = 2/3
    assert m["Has0_F1_score"] == pytest.approx(2 / 3)
    # Non0 (> 0, s2 and s3 dropped): truth [F F T T], pred [F T T T]: s1 wrong -> 3/4
    assert m["Non0_acc_2"] == pytest.approx(3 / 4)
    # F: tp 1, fp 0, fn 1 -> 2/3; T: tp 2, fp 1, fn 0 -> 4/5; supports (2, 2): (2/3 + 4/5) / 2 = 11/15
    assert m["Non0_F1_score"] == pytest.approx(11 / 15)
    # Acc-7: pred clip [-3, 3] + round -> [-3, 0, -0, 0, 1, 3]; truth -> [-3, -1, 0, 0, 2, 2] (2.5 -> 2, half
    # to even): s0, s2 (-0 == 0), s3 right -> 3/6
    assert m["Mult_acc_7"] == pytest.approx(3 / 6)
    # Acc-5: clip [-2, 2]: pred -> [-2, 0, 0, 0, 1, 2]; truth -> [-2, -1, 0, 0, 2, 2]: s0 s2 s3 s5 -> 4/6
    assert m["Mult_acc_5"] == pytest.approx(4 / 6)
    # |pred - truth| = 0.4 1.4 0.4 0.3 0.2 0.1 (sum 2.8); squares 0.16 1.96 0.16 0.09 0.04 0.01 (sum 2.42)
    assert m["MAE"] == pytest.approx(2.8 / 6)
    assert m["MSE"] == pytest.approx(2.42 / 6)
    assert m["Corr"] == pytest.approx(pearson_by_hand(PRED, TRUTH))
    assert regression_metrics(PRED, TRUTH, "MOSI") == m  # MMSA sends MOSI to the MOSEI function


def test_has0_and_non0_differ_on_neutral_labels():
    # every non-neutral sample right; the neutral ones predicted negative: Has0 counts them wrong (0 is
    # positive), Non0 drops them
    truth = [0.0, 0.0, 0.0, -1.0, 1.0, 2.0]
    pred = [-0.5, -0.1, -2.0, -1.0, 1.0, 2.0]
    m = regression_metrics(pred, truth)
    assert m["Has0_acc_2"] == pytest.approx(3 / 6)
    assert m["Non0_acc_2"] == 1.0 and m["Non0_F1_score"] == 1.0
    # pred 0 is positive for Has0 (>= 0) but negative for Non0 (> 0)
    m = regression_metrics([0.0, 0.0], [1.0, 2.0])
    assert m["Has0_acc_2"] == 1.0 and m["Non0_acc_2"] == 0.0


def test_acc7_clipping_and_half_to_even_rounding():
    # np.round rounds half to even: 2.5 -> 2, 0.5 -> 0, -0.5 -> -0, 1.5 -> 2, -2.5 -> -2; -3.4 and 3.7 clip to +-3
    assert np.round([2.5, 0.5, -0.5, 1.5, -2.5]).tolist() == [2.0, 0.0, -0.0, 2.0, -2.0]
    pred = [-3.4, 2.5, 0.5, -0.5, 1.5, 3.7]
    assert regression_metrics(pred, [-3, 2, 0, 0, 2, 3])["Mult_acc_7"] == 1.0
    # 2.5 is not 3, 0.5 not 1, -0.5 not -1, 1.5 not 1: only the clipped ends agree
    assert regression_metrics(pred, [-3, 3, 1, -1, 1, 3])["Mult_acc_7"] == pytest.approx(2 / 6)
    # Acc-5 clips to [-2, 2]: 2.5 -> 2 and 3 -> 2 agree, -3.4 -> -2 and -3 -> -2 agree
    assert regression_metrics([2.5, -3.4], [3.0, -3.0])["Mult_acc_5"] == 1.0
    assert regression_metrics([2.5, -3.4], [3.0, -3.0])["Mult_acc_7"] == 0.5  # 2 vs 3; -3 vs -3


def test_all_neutral_truth_gives_nan_non0():
    m = regression_metrics([0.5, -0.5, 0.1], [0.0, 0.0, 0.0])
    assert math.isnan(m["Non0_acc_2"]) and math.isnan(m["Non0_F1_score"])
    assert m["Has0_acc_2"] == pytest.approx(2 / 3)
    assert m["Corr"] == 0.0  # constant truth


@pytest.mark.parametrize("dataset", ["mosei", "sims"])
def test_constant_prediction_corr_is_zero_without_warning(dataset):
    truth = [-0.9, -0.3, 0.0, 0.4, 0.8]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's 0/0 RuntimeWarning would fail here
        m = regression_metrics([0.2] * 5, truth, dataset)
        one = regression_metrics([0.3], [0.1], dataset)
    assert m["Corr"] == 0.0 and one["Corr"] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(np.corrcoef([0.2] * 5, truth)[0, 1])  # what numpy (and MMSA) would report
    assert m["MAE"] == pytest.approx(np.mean(np.abs(0.2 - np.asarray(truth))))


def test_inputs_float32_int_and_tensor():
    m = regression_metrics(np.float32(PRED), np.float32(TRUTH))
    for k, v in regression_metrics(PRED, TRUTH).items():
        assert m[k] == pytest.approx(v, abs=1e-6), k
    ints = regression_metrics([1, -2, 0], [1, -1, 0])
    assert ints["Mult_acc_7"] == pytest.approx(2 / 3) and ints["MAE"] == pytest.approx(1 / 3)
    torch = pytest.importorskip("torch")
    t = regression_metrics(torch.tensor(PRED, requires_grad=True).view(2, 3), torch.tensor(TRUTH), "mosei")
    for k, v in m.items():
        assert t[k] == pytest.approx(v, abs=1e-6), k


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown dataset"):
        regression_metrics([0.0], [0.0], "iemocap")
    with pytest.raises(ValueError, match="values"):
        regression_metrics([0.0, 1.0], [0.0], "mosei")
    with pytest.raises(ValueError, match="no samples"):
        regression_metrics([], [], "sims")


# ---------------------------------------------------------------- SIMS
def test_sims_bins_edges():
    x = [-1.0, -0.7, -0.1, 0.0, 0.1, 0.7, 1.0]
    # (-1.01, 0] | (0, 1.01]
    assert sims_bins(np.asarray(x), 2).tolist() == [0, 0, 0, 0, 1, 1, 1]
    # (-1.01, -0.1] | (-0.1, 0.1] | (0.1, 1.01]
    assert sims_bins(np.asarray(x), 3).tolist() == [0, 0, 0, 1, 1, 2, 2]
    # (-1.01, -0.7] | (-0.7, -0.1] | (-0.1, 0.1] | (0.1, 0.7] | (0.7, 1.01]
    assert sims_bins(np.asarray(x), 5).tolist() == [0, 0, 1, 2, 2, 3, 4]
    # float32 labels (MMSA's tensors) compare with float32 edges: same bins. Upcasting float32 0.1
    # (0.10000000149) to float64 first would move it above the float64 edge 0.1, into the next bin.
    for n in (2, 3, 5):
        assert sims_bins(np.float32(x), n).tolist() == sims_bins(np.asarray(x), n).tolist()
    assert sims_bins(np.float32([0.1]).astype(np.float64), 5).tolist() == [3]


def test_sims_bins_match_mask_assignment_on_random_values():
    # MMSA's form: assign bin i to every value with edges[i] < x <= edges[i + 1]
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        # multiples of 0.1 (SIMS labels are means of five annotations) plus continuous predictions
        x = np.concatenate([np.round(rng.uniform(-1, 1, 200), 1), rng.uniform(-1, 1, 200)]).astype(dtype)
        for edges in ((-1.01, 0.0, 1.01), (-1.01, -0.1, 0.1, 1.01), (-1.01, -0.7, -0.1, 0.1, 0.7, 1.01)):
            expected = np.full(x.shape, -1)
            for i in range(len(edges) - 1):
                expected[(x > dtype(edges[i])) & (x <= dtype(edges[i + 1]))] = i
            assert (sims_bins(x, len(edges) - 1) == expected).all()


def test_sims_worked_example():
    truth = [-0.8, -0.2, 0.0, 0.1, 0.6, 1.0]
    pred = [-1.2, 0.05, -0.05, 0.3, 0.8, 0.9]  # -1.2 clips to -1
    m = regression_metrics(pred, truth, "sims")
    assert list(m) == SIMS_KEYS and all(type(v) is float for v in m.values())
    # 2 bins: truth [0 0 0 1 1 1], pred [0 1 0 1 1 1] -> 5/6
    assert m["Mult_acc_2"] == pytest.approx(5 / 6)
    # class 0: tp 2, fp 0, fn 1 -> 4/5; class 1: tp 3, fp 1, fn 0 -> 6/7; supports (3, 3): (4/5 + 6/7) / 2
    assert m["F1_score"] == pytest.approx(29 / 35)
    # 3 bins: truth [0 0 1 1 2 2], pred [0 1 1 2 2 2] -> s0 s2 s4 s5
    assert m["Mult_acc_3"] == pytest.approx(4 / 6)
    # 5 bins: truth [0 1 2 2 3 4], pred [0 2 2 3 4 4] -> s0 s2 s5
    assert m["Mult_acc_5"] == pytest.approx(3 / 6)
    # on the clipped arrays: |diff| 0.2 0.25 0.05 0.2 0.2 0.1 (sum 1.0; 1.2 unclipped), squares sum 0.195
    assert m["MAE"] == pytest.approx(1.0 / 6)
    assert m["MSE"] == pytest.approx(0.195 / 6)
    assert m["Corr"] == pytest.approx(pearson_by_hand(np.clip(pred, -1, 1), truth))
    assert regression_metrics(pred, truth, "SIMSv2") == m


def test_headline_constants():
    assert headline("mosi") == HEADLINE and headline("SIMS") == SIMS_HEADLINE
    m, s = regression_metrics(PRED, TRUTH, "mosei"), regression_metrics(PRED, TRUTH, "sims")
    assert set(HEADLINE) <= set(m) and set(SIMS_HEADLINE) <= set(s)
    assert LOWER_IS_BETTER == {"MAE", "MSE"} and LOWER_IS_BETTER <= set(m) & set(s)


# ---------------------------------------------------------------- classification_metrics
def previous_classification_metrics(y_true, y_pred, labels):
    """The hand-written numpy implementation replaced by scikit-learn (training/evaluation/metrics.py at the
    commit before the move), as the reference."""
    num_classes = len(labels)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(0), out=np.zeros_like(tp), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros_like(tp), where=cm.sum(1) > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (cm.sum(0) + cm.sum(1)) > 0
    return {
        "n": int(cm.sum()),
        "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_f1": {label: float(v) for label, v in zip(labels, f1)},
        "confusion_matrix": cm.tolist(),
    }


LABELS = ["neutral", "happy", "sad", "angry", "fearful", "disgust"]


def assert_same_as_previous(y_true, y_pred, labels):
    new, old = classification_metrics(y_true, y_pred, labels), previous_classification_metrics(y_true, y_pred, labels)
    assert set(new) == set(old) | {"weighted_f1"}
    assert new["n"] == old["n"] and type(new["n"]) is int
    assert new["confusion_matrix"] == old["confusion_matrix"]
    assert all(type(v) is int for row in new["confusion_matrix"] for v in row)
    for key in ("accuracy", "macro_f1"):
        assert type(new[key]) is float and new[key] == pytest.approx(old[key], rel=1e-12, abs=1e-15), key
    assert list(new["per_class_f1"]) == list(old["per_class_f1"])
    for label in labels:
        assert type(new["per_class_f1"][label]) is float
        assert new["per_class_f1"][label] == pytest.approx(old["per_class_f1"][label], rel=1e-12, abs=1e-15)
    return new


@pytest.mark.parametrize("seed", range(8))
def test_classification_metrics_same_as_previous_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    y_true = rng.integers(0, 4, n)  # classes 4 ("fearful") and 5 ("disgust") never true
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, 5, n))  # 5 never predicted either
    new = assert_same_as_previous(y_true, y_pred, LABELS)
    assert new["per_class_f1"]["disgust"] == 0.0
    # weighted F1: per-class F1 weighted by true support, classes never true weigh nothing
    f1 = np.asarray(list(new["per_class_f1"].values()))
    support = np.bincount(y_true, minlength=len(LABELS))
    assert new["weighted_f1"] == pytest.approx(float((f1 * support).sum() / support.sum()))


def test_classification_metrics_edge_cases_same_as_previous():
    assert_same_as_previous([2, 2, 2], [2, 2, 2], LABELS)  # one class only, all right
    assert_same_as_previous([0, 1], [3, 3], LABELS)  # all wrong; class 3 predicted, never true
    assert_same_as_previous(np.asarray([0.0, 1.0, 1.0]), [1, 1, 0], LABELS)  # float labels read as ints
    empty = assert_same_as_previous([], [], LABELS)
    assert empty["weighted_f1"] == 0.0 and empty["n"] == 0


def test_weighted_f1_by_hand():
    # per-class F1 (test_reports' example): neutral 0.8 (support 3), happy 0.5 (2), sad 0.5 (2), angry 0 (0)
    m = classification_metrics([0, 0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2, 3], ["neutral", "happy", "sad", "angry"])
    assert m["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 2 * 0.5) / 7)
    assert m["macro_f1"] == pytest.approx(0.45)  # over the 4 present classes


def test_classification_metrics_refuses_out_of_range_classes():
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 6], [0, 0], LABELS)
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 1], [0, -1], LABELS)
