"""Metrics checked against scikit-learn on many seeded random cases."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    silhouette_score,
)

from emobridge.metrics import (
    MetricError,
    bootstrap_ci,
    confusion,
    evaluate,
    macro_f1,
    per_class_report,
    silhouette_by_label,
    unweighted_average_recall,
    weighted_accuracy,
)

CLASSES = ("anger", "happiness", "neutral", "sadness")


def random_case(rng: np.random.Generator):
    """Random labels with imbalance, missing classes and a varying hit rate."""
    n_classes = int(rng.integers(2, 8))
    n = int(rng.integers(1, 200))
    probs = rng.dirichlet(np.full(n_classes, 0.7))
    y_true = rng.choice(n_classes, n, p=probs)
    y_pred = np.where(rng.random(n) < rng.random(), y_true, rng.integers(0, n_classes, n))
    return y_true, y_pred, n_classes


def noisy_predictions(n: int, n_classes: int, hit_rate: float, seed: int):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, n_classes, n)
    y_pred = np.where(rng.random(n) < hit_rate, y_true, rng.integers(0, n_classes, n))
    return y_true, y_pred


def test_against_sklearn_on_random_cases():
    rng = np.random.default_rng(1234)
    for _ in range(150):
        y_true, y_pred, k = random_case(rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns on classes absent from y_true
            ref_ua = balanced_accuracy_score(y_true, y_pred)
        assert unweighted_average_recall(y_true, y_pred, k) == pytest.approx(ref_ua)
        assert unweighted_average_recall(y_true, y_pred) == pytest.approx(ref_ua)
        assert weighted_accuracy(y_true, y_pred) == pytest.approx(accuracy_score(y_true, y_pred))
        ref_f1 = f1_score(y_true, y_pred, average="macro", zero_division=0)
        assert macro_f1(y_true, y_pred, k) == pytest.approx(ref_f1)
        labels = list(range(k))
        np.testing.assert_array_equal(confusion(y_true, y_pred, k),
                                      confusion_matrix(y_true, y_pred, labels=labels))
        for norm in ("true", "pred", "all"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = confusion_matrix(y_true, y_pred, labels=labels, normalize=norm)
            np.testing.assert_allclose(confusion(y_true, y_pred, k, normalise=norm), ref)


def test_per_class_report_matches_sklearn_and_nan_rules():
    rng = np.random.default_rng(7)
    for _ in range(50):
        y_true, y_pred, k = random_case(rng)
        classes = [f"c{i}" for i in range(k)]
        report = per_class_report(y_true, y_pred, classes)
        assert list(report.index) == classes
        p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(range(k)),
                                                     zero_division=np.nan)
        np.testing.assert_allclose(report.precision, p, equal_nan=True)
        np.testing.assert_allclose(report.recall, r, equal_nan=True)
        np.testing.assert_array_equal(report.support, s)
        present = (s > 0) | (np.bincount(y_pred, minlength=k) > 0)
        np.testing.assert_allclose(report.f1[present], np.nan_to_num(f)[present])
        assert report.f1[~present].isna().all()
    report = per_class_report([0, 0, 1], [0, 1, 1], CLASSES)
    assert np.isnan(report.loc["sadness", "recall"]) and np.isnan(report.loc["neutral",
                                                                             "precision"])
    assert report.loc["anger", "recall"] == 0.5 and report.loc["happiness", "precision"] == 0.5


def test_ua_differs_from_wa_on_imbalance_and_string_labels():
    y_true = np.array([0] * 90 + [1] * 10)
    y_pred = np.zeros(100, dtype=int)
    assert weighted_accuracy(y_true, y_pred) == pytest.approx(0.9)
    assert unweighted_average_recall(y_true, y_pred) == pytest.approx(0.5)
    t = np.array(["anger", "anger", "sadness", "sadness"])
    p = np.array(["anger", "sadness", "sadness", "fear"])
    assert unweighted_average_recall(t, p) == pytest.approx(0.5)
    assert macro_f1(t, p) == pytest.approx(f1_score(t, p, average="macro", zero_division=0))


def test_metric_input_errors():
    with pytest.raises(MetricError, match="3 labels but y_pred has 2"):
        unweighted_average_recall([0, 1, 1], [0, 1])
    with pytest.raises(MetricError, match="empty"):
        weighted_accuracy([], [])
    with pytest.raises(MetricError, match="-1"):
        unweighted_average_recall([0, -1], [0, 0])
    with pytest.raises(MetricError, match="class 4 but n_classes is 4"):
        confusion([0, 4], [0, 1], 4)
    with pytest.raises(MetricError, match="normalise"):
        confusion([0], [0], 2, normalise="rows")
    with pytest.raises(MetricError, match="1-D"):
        macro_f1(np.zeros((2, 2), int), np.zeros((2, 2), int))


def test_bootstrap_ci_contains_estimate_and_narrows():
    widths = []
    for n in (60, 600, 6000):
        y_true, y_pred = noisy_predictions(n, 4, 0.6, seed=n)
        point = unweighted_average_recall(y_true, y_pred)
        low, high = bootstrap_ci(y_true, y_pred, n_resamples=300, seed=0)
        assert low <= point <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2] > 0
    # Roughly the normal-theory width: 2 * 1.96 * sqrt(p (1 - p) / n) for accuracy-like UA.
    assert widths[2] == pytest.approx(2 * 1.96 * np.sqrt(0.7 * 0.3 / 6000), rel=0.3)


def test_bootstrap_ci_seed_confidence_metric_and_stratify():
    y_true, y_pred = noisy_predictions(200, 3, 0.5, seed=3)
    a = bootstrap_ci(y_true, y_pred, n_resamples=200, seed=1)
    assert bootstrap_ci(y_true, y_pred, n_resamples=200, seed=1) == a
    assert bootstrap_ci(y_true, y_pred, n_resamples=200, seed=2) != a
    narrow = bootstrap_ci(y_true, y_pred, n_resamples=200, confidence=0.5, seed=1)
    assert a[0] < narrow[0] <= narrow[1] < a[1]
    low, high = bootstrap_ci(y_true, y_pred, metric=weighted_accuracy, n_resamples=200)
    assert low <= weighted_accuracy(y_true, y_pred) <= high
    # Stratified resampling keeps every class in each resample: UA over the same classes.
    y_true = np.array([0] * 50 + [1] * 2)
    y_pred = np.array([0] * 50 + [1] * 2)
    low, high = bootstrap_ci(y_true, y_pred, n_resamples=100, stratify=True)
    assert low == high == 1.0
    with pytest.raises(MetricError, match="confidence"):
        bootstrap_ci(y_true, y_pred, confidence=1.5)


def test_evaluate_report_is_consistent_and_json_ready():
    y_true, y_pred = noisy_predictions(300, 4, 0.55, seed=9)
    out = evaluate(y_true, y_pred, CLASSES, n_resamples=200)
    assert out["ua"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert out["wa"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert out["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert out["ua_ci_low"] <= out["ua"] <= out["ua_ci_high"]
    assert out["confusion"] == confusion_matrix(y_true, y_pred).tolist()
    assert out["n"] == 300 and out["classes"] == list(CLASSES)
    assert sum(c["support"] for c in out["per_class"].values()) == 300
    assert out["per_class"]["anger"]["recall"] == pytest.approx(
        np.mean(y_pred[y_true == 0] == 0))
    json.dumps(out, allow_nan=False)
    # Scores: arg-max is taken.
    scores = np.eye(4)[y_pred] * 0.7 + 0.1
    assert evaluate(y_true, scores, CLASSES, ci=False)["ua"] == out["ua"]
    no_ci = evaluate([0, 1], [0, 0], CLASSES, ci=False)
    assert no_ci["ua_ci_low"] is None and no_ci["per_class"]["sadness"]["recall"] is None
    json.dumps(no_ci, allow_nan=False)
    with pytest.raises(MetricError, match="3 columns for 4 classes"):
        evaluate(y_true, scores[:, :3], CLASSES)


def test_silhouette_by_label():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 30)
    separated = rng.normal(size=(90, 5)) + 6.0 * np.eye(5)[labels]
    mixed = rng.normal(size=(90, 5))
    s_sep, s_mix = silhouette_by_label(separated, labels), silhouette_by_label(mixed, labels)
    assert s_sep == pytest.approx(silhouette_score(separated, labels))
    assert s_sep > 0.5 and abs(s_mix) < 0.1
    assert np.isnan(silhouette_by_label(separated, np.zeros(90)))
    assert np.isnan(silhouette_by_label(separated[:3], [0, 1, 2]))
    assert silhouette_by_label(separated, np.array(["de", "en", "it"])[labels]) == \
        pytest.approx(s_sep)
    with pytest.raises(MetricError, match="one entry per embedding"):
        silhouette_by_label(separated, labels[:10])
