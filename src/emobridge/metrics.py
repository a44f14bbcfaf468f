"""Evaluation metrics for emotion recognition: UA, WA, macro-F1, confusion, bootstrap CIs.

Labels are class indices (``0 .. n_classes-1``, as produced by
:meth:`emobridge.methods.base.AdaptationMethod.predict`) or any other hashable labels
(strings...). Negative integers are refused: ``-1`` marks an unlabelled utterance
(:data:`emobridge.methods.data.UNLABELLED`) and must never reach a metric.

Conventions (the SER literature's):

- **UA** (unweighted average recall, "unweighted accuracy") is the mean of the per-class
  recalls over the classes present in ``y_true``; a class absent from ``y_true`` has no
  recall and is left out of the mean (as :func:`sklearn.metrics.balanced_accuracy_score`
  does). It is insensitive to class imbalance; chance level is ``1 / n_classes``.
- **WA** (weighted accuracy) is plain accuracy: per-class recalls weighted by support.
- **macro-F1** averages per-class F1 over the classes present in ``y_true`` or ``y_pred``
  (scikit-learn's default label set); a class predicted but never true counts with F1 = 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from emobridge.errors import EmobridgeError

__all__ = [
    "MetricError",
    "bootstrap_ci",
    "confusion",
    "evaluate",
    "macro_f1",
    "per_class_report",
    "silhouette_by_label",
    "unweighted_average_recall",
    "weighted_accuracy",
]

Metric = Callable[[np.ndarray, np.ndarray], float]


class MetricError(EmobridgeError):
    """Inputs to a metric are inconsistent (lengths, empty, labels out of range)."""


# --------------------------------------------------------------------------- helpers


def _labels(y: Any, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise MetricError(f"{name} must be one label per utterance (1-D), got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise MetricError(f"{name} holds non-integer floats; pass class indices")
        arr = arr.astype(np.int64)
    if arr.dtype.kind in "iu" and arr.size and arr.min() < 0:
        raise MetricError(f"{name} contains the negative label {int(arr.min())} "
                          "(-1 marks an unlabelled utterance; metrics need true classes)")
    return arr


def _pair(y_true: Any, y_pred: Any, n_classes: int | None = None) -> tuple[np.ndarray, ...]:
    """Validated ``(y_true, y_pred)`` as arrays, both non-empty and the same length."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if len(t) != len(p):
        raise MetricError(f"y_true has {len(t)} labels but y_pred has {len(p)}")
    if len(t) == 0:
        raise MetricError("no utterances to evaluate (empty y_true)")
    if n_classes is not None:
        if int(n_classes) < 1:
            raise MetricError(f"n_classes must be >= 1, got {n_classes}")
        for name, arr in (("y_true", t), ("y_pred", p)):
            if arr.dtype.kind not in "iu":
                raise MetricError(f"{name} must hold class indices when n_classes is given, "
                                  f"got dtype {arr.dtype}")
            if arr.max() >= n_classes:
                raise MetricError(f"{name} contains class {int(arr.max())} but n_classes is "
                                  f"{n_classes}")
    return t, p


def _encode(t: np.ndarray, p: np.ndarray, n_classes: int | None) -> tuple[np.ndarray, ...]:
    """Integer codes for both arrays and the number of codes."""
    if n_classes is not None:
        return t.astype(np.int64), p.astype(np.int64), int(n_classes)
    if t.dtype.kind in "iu" and p.dtype.kind in "iu":
        n = int(max(t.max(), p.max())) + 1
        return t.astype(np.int64), p.astype(np.int64), n
    try:
        uniq, codes = np.unique(np.concatenate([t, p]).astype(str), return_inverse=True)
    except TypeError as exc:
        raise MetricError(f"labels cannot be compared: {exc}") from None
    return codes[: len(t)], codes[len(t):], len(uniq)


def _counts(t: np.ndarray, p: np.ndarray, n: int) -> np.ndarray:
    """Confusion counts, rows true, columns predicted, shape ``(n, n)``."""
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n)


def _ua_codes(t: np.ndarray, p: np.ndarray, n: int) -> float:
    support = np.bincount(t, minlength=n)
    hits = np.bincount(t[t == p], minlength=n)
    present = support > 0
    return float(np.mean(hits[present] / support[present]))


# --------------------------------------------------------------------------- metrics


def unweighted_average_recall(y_true: Any, y_pred: Any, n_classes: int | None = None) -> float:
    """UA: mean per-class recall over the classes present in ``y_true``.

    Classes absent from ``y_true`` (whatever ``y_pred`` says) are excluded from the mean, so
    the value equals :func:`sklearn.metrics.balanced_accuracy_score`. ``n_classes`` only
    validates that labels are class indices below it.
    """
    t, p, n = _encode(*_pair(y_true, y_pred, n_classes), n_classes)
    return _ua_codes(t, p, n)


def weighted_accuracy(y_true: Any, y_pred: Any, n_classes: int | None = None) -> float:
    """WA: the share of utterances predicted correctly (plain accuracy)."""
    t, p = _pair(y_true, y_pred, n_classes)
    return float(np.mean(t == p))


def macro_f1(y_true: Any, y_pred: Any, n_classes: int | None = None) -> float:
    """Mean per-class F1 over the classes present in ``y_true`` or ``y_pred``.

    Per-class F1 is ``2 tp / (2 tp + fp + fn)``, 0 for a class predicted but never true (or
    true but never predicted). Equals ``sklearn.metrics.f1_score(average="macro",
    zero_division=0)``. ``n_classes`` only validates the labels.
    """
    t, p, n = _encode(*_pair(y_true, y_pred, n_classes), n_classes)
    cm = _counts(t, p, n)
    tp = np.diag(cm).astype(float)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # (tp + fp) + (tp + fn)
    present = denom > 0
    return float(np.mean(2 * tp[present] / denom[present]))


def confusion(
    y_true: Any,
    y_pred: Any,
    n_classes: int,
    normalise: Literal["true", "pred", "all"] | None = None,
) -> np.ndarray:
    """Confusion matrix ``(n_classes, n_classes)``: rows true class, columns predicted.

    ``normalise=None`` gives counts (int64); ``"true"`` divides each row by its support
    (rows of absent classes stay 0), ``"pred"`` each column by its predicted count,
    ``"all"`` by the total, as :func:`sklearn.metrics.confusion_matrix` does.
    """
    if normalise not in (None, "true", "pred", "all"):
        raise MetricError(f"normalise must be None, 'true', 'pred' or 'all', got {normalise!r}")
    t, p = _pair(y_true, y_pred, n_classes)
    cm = _counts(t.astype(np.int64), p.astype(np.int64), int(n_classes))
    if normalise is None:
        return cm
    if normalise == "true":
        denom = cm.sum(axis=1, keepdims=True)
    elif normalise == "pred":
        denom = cm.sum(axis=0, keepdims=True)
    else:
        denom = np.array(cm.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        out = cm / denom
    return np.nan_to_num(out, nan=0.0)


def per_class_report(y_true: Any, y_pred: Any, classes: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class; one row per entry of ``classes``.

    ``y_true`` / ``y_pred`` are indices into ``classes``. Undefined values are NaN:
    precision of a class never predicted, recall of a class with no support, F1 of a class
    neither true nor predicted.
    """
    classes = [str(c) for c in classes]
    t, p = _pair(y_true, y_pred, len(classes))
    cm = _counts(t.astype(np.int64), p.astype(np.int64), len(classes))
    tp = np.diag(cm).astype(float)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        denom = predicted + support
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
    return pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(int)},
        index=pd.Index(classes, name="class"),
    )


def bootstrap_ci(
    y_true: Any,
    y_pred: Any,
    metric: Metric = unweighted_average_recall,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    stratify: bool = False,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``metric`` over utterances.

    Draws ``n_resamples`` resamples of the utterances with replacement (``seed``), computes
    ``metric(y_true[idx], y_pred[idx])`` on each and returns the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles. With ``stratify`` each true class is resampled
    within itself, keeping class supports fixed (every class stays in every resample, which
    keeps UA's class set fixed on small test sets). Utterances are treated as independent;
    resampling speakers instead would give wider, more honest intervals on few speakers.
    """
    t, p = _pair(y_true, y_pred)
    if isinstance(n_resamples, bool) or int(n_resamples) < 1:
        raise MetricError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise MetricError(f"confidence must be in (0, 1), got {confidence!r}")
    rng = np.random.default_rng(seed)
    n = len(t)
    if metric is unweighted_average_recall:
        # Fast path: encode once, skip per-resample validation.
        tc, pc, k = _encode(t, p, None)
        fn: Callable[[np.ndarray], float] = lambda idx: _ua_codes(tc[idx], pc[idx], k)  # noqa: E731
    else:
        fn = lambda idx: float(metric(t[idx], p[idx]))  # noqa: E731
    groups = [np.flatnonzero(t == c) for c in np.unique(t)] if stratify else [np.arange(n)]
    values = np.empty(int(n_resamples))
    for i in range(int(n_resamples)):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        values[i] = fn(idx)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _none_if_nan(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def evaluate(
    y_true: Any,
    y_pred: Any,
    classes: Sequence[str],
    ci: bool = True,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Every headline metric of a test set as a JSON-ready dict.

    ``y_true`` holds class indices into ``classes``; ``y_pred`` class indices or a
    ``(n, n_classes)`` score / probability matrix (arg-max taken). Keys: ``ua``, ``wa``,
    ``macro_f1``, ``ua_ci_low`` / ``ua_ci_high`` (percentile bootstrap of UA, see
    :func:`bootstrap_ci`; ``None`` when ``ci`` is False), ``confusion`` (counts, list of
    lists, rows true), ``per_class`` (class -> precision / recall / f1 / support; ``None``
    where undefined), ``classes`` and ``n``.
    """
    classes = [str(c) for c in classes]
    pred = np.asarray(y_pred)
    if pred.ndim == 2:
        if pred.shape[1] != len(classes):
            raise MetricError(f"y_pred scores have {pred.shape[1]} columns for "
                              f"{len(classes)} classes")
        pred = pred.argmax(axis=1)
    t, p = _pair(y_true, pred, len(classes))
    out: dict[str, Any] = {
        "ua": unweighted_average_recall(t, p, len(classes)),
        "wa": weighted_accuracy(t, p),
        "macro_f1": macro_f1(t, p, len(classes)),
        "ua_ci_low": None,
        "ua_ci_high": None,
    }
    if ci:
        out["ua_ci_low"], out["ua_ci_high"] = bootstrap_ci(
            t, p, unweighted_average_recall, n_resamples, confidence, seed)
    out["confusion"] = confusion(t, p, len(classes)).tolist()
    report = per_class_report(t, p, classes)
    out["per_class"] = {
        c: {"precision": _none_if_nan(row.precision), "recall": _none_if_nan(row.recall),
            "f1": _none_if_nan(row.f1), "support": int(row.support)}
        for c, row in report.iterrows()
    }
    out["classes"] = classes
    out["n"] = len(t)
    return out


def silhouette_by_label(
    embeddings: Any,
    labels: Any,
    metric: str = "euclidean",
    sample_size: int | None = None,
    seed: int = 0,
) -> float:
    """Silhouette score of ``embeddings`` grouped by ``labels`` (emotion, language...).

    In ``[-1, 1]``; higher means the labels form tighter, better separated clusters
    (:func:`sklearn.metrics.silhouette_score`). Returns NaN when there are fewer than two
    distinct labels or as many labels as points (silhouette is undefined then).
    ``sample_size`` scores a seeded random subset, for large sets (the full pairwise
    distance matrix is ``n**2``).
    """
    from sklearn.metrics import silhouette_score

    x = np.asarray(embeddings, dtype=float)
    y = np.asarray(labels)
    if x.ndim != 2:
        raise MetricError(f"embeddings must be (n, d), got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise MetricError(f"labels must be 1-D with one entry per embedding row ({len(x)}), "
                          f"got shape {y.shape}")
    if not np.all(np.isfinite(x)):
        raise MetricError("embeddings contain NaN or infinite values")
    n_labels = len(np.unique(y))
    if n_labels < 2 or n_labels >= len(x):
        return float("nan")
    return float(silhouette_score(x, y, metric=metric, sample_size=sample_size,
                                  random_state=seed))
