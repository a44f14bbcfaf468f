"""One metrics implementation: sklearn.metrics for the scores, scipy.stats.bootstrap for the
CIs (both public bootstrap names), missing classes named, and the results tables on top."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import bootstrap
from sklearn.metrics import balanced_accuracy_score, recall_score

from emobridge import fileio
from emobridge.experiments import results
from emobridge.experiments.results import (
    CellKey,
    CellRecord,
    Task,
    aggregate,
    cells_frame,
    display_table,
    format_ci,
    format_number,
    format_pct,
    mean_std,
    missing_classes,
    per_class_table,
)
from emobridge.metrics import (
    MetricError,
    _ua_of_codes,
    bootstrap_ci,
    bootstrap_mean_ua,
    evaluate,
    per_class_from_confusion,
    per_class_report,
    unweighted_average_recall,
)

CLASSES = ["anger", "happiness", "neutral", "sadness"]


def _noisy(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, k, n)
    return t, np.where(rng.random(n) < 0.5, t, rng.integers(0, k, n))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_vectorised_ua_matches_sklearn_row_by_row() -> None:
    rng = np.random.default_rng(3)
    k = 5
    t = rng.choice(k, (40, 30), p=[0.5, 0.3, 0.15, 0.05, 0.0])  # class 4 never true
    p = rng.integers(0, k, (40, 30))
    got = _ua_of_codes(t * k + p, k)
    assert got.shape == (40,)
    for row in range(40):
        assert got[row] == pytest.approx(balanced_accuracy_score(t[row], p[row]))


def test_bootstrap_ci_is_scipy_paired_percentile_bootstrap() -> None:
    """Same seed, same resampled indices: scipy's paired bootstrap of sklearn's UA."""
    t, p = _noisy(150, 4, seed=11)
    ours = bootstrap_ci(t, p, n_resamples=120, seed=5)

    def ua(a: np.ndarray, b: np.ndarray) -> float:
        return recall_score(a, b, labels=np.unique(a), average="macro", zero_division=0)

    ref = bootstrap((t, p), ua, paired=True, vectorized=False, n_resamples=120,
                    method="percentile", random_state=np.random.default_rng(5))
    assert ours == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    # The mean-over-seeds CI of one seed is the same bootstrap.
    assert bootstrap_mean_ua([(t, p)], 4, 120, seed=5) == pytest.approx(ours)


def test_bootstrap_degenerate_inputs_give_the_point_value() -> None:
    # One utterance: scipy refuses a one-observation sample; every resample is that
    # utterance, so the interval is the point value.
    assert bootstrap_ci([2], [2]) == (1.0, 1.0)
    assert bootstrap_ci([2], [0]) == (0.0, 0.0)
    # All one class, all right (a constant bootstrap distribution).
    assert bootstrap_ci([1, 1, 1, 1], [1, 1, 1, 1], n_resamples=50) == (1.0, 1.0)
    # Stratified with a class of one utterance: that class is held, the rest resampled.
    low, high = bootstrap_ci([0, 0, 0, 0, 1], [0, 1, 0, 0, 1], n_resamples=200,
                             stratify=True)
    assert 0.5 <= low <= high == 1.0
    # Mean over seeds: one seed of a single utterance, one ordinary seed.
    t, p = _noisy(50, 3, seed=2)
    low, high = bootstrap_mean_ua([([1], [1]), (t, p)], 3, 200)
    assert 0.0 < low < high <= 1.0
    assert bootstrap_mean_ua([([0], [0])], 3) == (1.0, 1.0)
    with pytest.raises(MetricError, match="n_resamples"):
        bootstrap_ci([0, 1], [0, 1], n_resamples=0)


def test_evaluate_names_missing_classes_and_handles_tiny_sets() -> None:
    out = evaluate([0, 0, 1, 1], [0, 1, 1, 1], CLASSES, n_resamples=100)
    assert out["missing_classes"] == ["neutral", "sadness"]
    # UA over the present classes (anger 1/2, happiness 2/2), as before.
    assert out["ua"] == pytest.approx(0.75)
    assert out["ua_ci_low"] <= out["ua"] <= out["ua_ci_high"]
    full = evaluate([0, 1, 2, 3], [0, 1, 2, 3], CLASSES, ci=False)
    assert full["missing_classes"] == []
    one = evaluate([3], [3], CLASSES)
    assert (one["ua"], one["ua_ci_low"], one["ua_ci_high"], one["n"]) == (1.0, 1.0, 1.0, 1)
    assert one["missing_classes"] == ["anger", "happiness", "neutral"]
    same = evaluate([2, 2, 2], [2, 2, 0], CLASSES, n_resamples=100)
    assert same["ua"] == pytest.approx(2 / 3) and same["missing_classes"] == [
        "anger", "happiness", "sadness"]


def test_per_class_from_confusion_is_the_per_class_report() -> None:
    t, p = _noisy(120, 4, seed=4)
    cm = evaluate(t, p, CLASSES, ci=False)["confusion"]
    pd.testing.assert_frame_equal(per_class_from_confusion(cm, CLASSES),
                                  per_class_report(t, p, CLASSES))
    pd.testing.assert_frame_equal(per_class_table(np.asarray(cm), CLASSES),
                                  per_class_report(t, p, CLASSES))
    empty = per_class_from_confusion(np.zeros((4, 4)), CLASSES)
    assert empty["recall"].isna().all() and (empty["support"] == 0).all()
    with pytest.raises(MetricError, match=r"\(4, 4\)"):
        per_class_from_confusion(np.zeros((3, 3)), CLASSES)


def test_one_sanitiser_one_bootstrap() -> None:
    assert results.jsonable is fileio.jsonable
    assert results.bootstrap_mean_ua is bootstrap_mean_ua
    assert results.jsonable({"x": np.float32("nan"), "y": np.int64(3)}) == {"x": None, "y": 3}


def test_formatting_helpers() -> None:
    assert format_pct(0.6134) == "61.3" and format_pct(0.5, 0.02) == "50.0 ± 2.0"
    assert format_pct(0.5, float("nan")) == "50.0"
    assert format_pct(None) == format_pct(float("nan")) == "-"
    assert format_ci(0.55, 0.675) == "[55.0, 67.5]" and format_ci(None, 0.5) == "-"
    assert format_number(0.12345) == "0.123" and format_number(None) == "-"
    assert mean_std([0.5, None, float("nan"), 0.7]) == pytest.approx((0.6, np.std([.5, .7],
                                                                                  ddof=1)))
    assert mean_std([0.5]) == (0.5, 0.0)
    assert all(np.isnan(mean_std([])))


def _record(seed: int, y_true: list[int], y_pred: list[int]) -> CellRecord:
    target = evaluate(y_true, y_pred, CLASSES, n_resamples=50, seed=seed)
    metrics = {"target": target, "classes": CLASSES,
               "predictions": {"target": {"y_true": y_true, "y_pred": y_pred}}}
    return CellRecord(CellKey("aa-to-bb", "feat", "m", 0, seed),
                      Task("aa-to-bb", ("aa",), "bb"), "ok", metrics=metrics)


def test_missing_classes_reach_the_tables() -> None:
    full = _record(0, [0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 1, 1])
    lacking = _record(1, [0, 0, 1, 1], [0, 1, 1, 1])
    table = aggregate([full, lacking], n_resamples=50)
    assert table.loc[0, "missing_classes"] == "neutral;sadness"
    assert table.loc[0, "ua_mean"] == pytest.approx(np.mean(
        [unweighted_average_recall(*pair) for pair in (([0, 1, 2, 3, 0, 1],
                                                         [0, 1, 2, 3, 1, 1]),
                                                        ([0, 0, 1, 1], [0, 1, 1, 1]))]))
    shown = display_table(table)
    assert "no test utterance of: neutral, sadness" in shown.loc[0, "note"]
    cells = cells_frame([full, lacking])
    assert list(cells["missing_classes"]) == ["", "neutral;sadness"]
    # Without missing classes the formatted table has no note column.
    assert "note" not in display_table(aggregate([full], n_resamples=20)).columns
    # metrics.json written before the key existed: read from the per-class supports.
    old = dict(lacking.metrics["target"])
    del old["missing_classes"]
    assert missing_classes(old) == ["neutral", "sadness"]
    assert missing_classes(None) == []
