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

The metrics are :mod:`sklearn.metrics` behind one input check; confidence intervals are
:func:`scipy.stats.bootstrap` (percentile method) in one place, :func:`_percentile_bootstrap`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from emobridge.errors import EmobridgeError

# scikit-learn is imported inside the functions that use it: loading a model to predict
# imports this module (through the training code) and needs none of it (about 1 s).

__all__ = [
    "MetricError",
    "bootstrap_ci",
    "bootstrap_mean_ua",
    "confusion",
    "evaluate",
    "macro_f1",
    "per_class_from_confusion",
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
    """Validated ``(y_true, y_pred)`` as arrays of one kind (both integer or both string),
    non-empty and the same length."""
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
    if t.dtype.kind in "iu" and p.dtype.kind in "iu":
        return t.astype(np.int64), p.astype(np.int64)
    # scikit-learn refuses a mix of label types; compare everything else as text.
    return t.astype(str), p.astype(str)


def _indices(y_true: Any, y_pred: Any, n_classes: int | None) -> tuple[np.ndarray, ...]:
    """``(y_true, y_pred, n)``: validated labels as class indices ``0 .. n-1``."""
    t, p = _pair(y_true, y_pred, n_classes)
    if n_classes is not None:
        return t, p, int(n_classes)
    if t.dtype.kind in "iu":
        return t, p, int(max(t.max(), p.max())) + 1
    uniq, codes = np.unique(np.concatenate([t, p]), return_inverse=True)
    return codes[: len(t)], codes[len(t):], len(uniq)


# --------------------------------------------------------------------------- metrics


def unweighted_average_recall(y_true: Any, y_pred: Any, n_classes: int | None = None) -> float:
    """UA: mean per-class recall over the classes present in ``y_true``.

    :func:`sklearn.metrics.recall_score` (``average="macro"``) over the classes of
    ``y_true``: classes absent from ``y_true`` (whatever ``y_pred`` says) are left out of the
    mean, so the value equals :func:`sklearn.metrics.balanced_accuracy_score`.
    ``n_classes`` only validates that labels are class indices below it.
    """
    t, p = _pair(y_true, y_pred, n_classes)
    from sklearn.metrics import recall_score
    return float(recall_score(t, p, labels=np.unique(t), average="macro", zero_division=0))


def weighted_accuracy(y_true: Any, y_pred: Any, n_classes: int | None = None) -> float:
    """WA: the share of utterances predicted correctly (:func:`sklearn.metrics.accuracy_score`)."""
    t, p = _pair(y_true, y_pred, n_classes)
    from sklearn.metrics import accuracy_score
    return float(accuracy_score(t, p))


def macro_f1(y_true: Any, y_pred: Any, n_classes: int | None = None) -> float:
    """Mean per-class F1 over the classes present in ``y_true`` or ``y_pred``.

    ``sklearn.metrics.f1_score(average="macro", zero_division=0)``: a class predicted but
    never true (or true but never predicted) counts with F1 = 0. ``n_classes`` only
    validates the labels.
    """
    t, p = _pair(y_true, y_pred, n_classes)
    from sklearn.metrics import f1_score
    return float(f1_score(t, p, average="macro", zero_division=0))


def confusion(
    y_true: Any,
    y_pred: Any,
    n_classes: int,
    normalise: Literal["true", "pred", "all"] | None = None,
) -> np.ndarray:
    """Confusion matrix ``(n_classes, n_classes)``: rows true class, columns predicted.

    :func:`sklearn.metrics.confusion_matrix` over the labels ``0 .. n_classes-1``.
    ``normalise=None`` gives counts (int64); ``"true"`` divides each row by its support
    (rows of absent classes stay 0), ``"pred"`` each column by its predicted count,
    ``"all"`` by the total.
    """
    if normalise not in (None, "true", "pred", "all"):
        raise MetricError(f"normalise must be None, 'true', 'pred' or 'all', got {normalise!r}")
    t, p = _pair(y_true, y_pred, n_classes)
    with warnings.catch_warnings():
        # sklearn warns when a row / column sums to 0; that row stays 0, as documented.
        warnings.simplefilter("ignore", RuntimeWarning)
        from sklearn.metrics import confusion_matrix
        cm = confusion_matrix(t, p, labels=np.arange(int(n_classes)), normalize=normalise)
    return cm.astype(np.int64) if normalise is None else cm


def per_class_report(y_true: Any, y_pred: Any, classes: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class; one row per entry of ``classes``.

    ``y_true`` / ``y_pred`` are indices into ``classes``
    (:func:`sklearn.metrics.precision_recall_fscore_support`). Undefined values are NaN:
    precision of a class never predicted, recall of a class with no support, F1 of a class
    neither true nor predicted.
    """
    classes = [str(c) for c in classes]
    t, p = _pair(y_true, y_pred, len(classes))
    from sklearn.metrics import precision_recall_fscore_support
    precision, recall, f1, support = precision_recall_fscore_support(
        t, p, labels=np.arange(len(classes)), zero_division=np.nan)
    return pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(int)},
        index=pd.Index(classes, name="class"),
    )


def per_class_from_confusion(counts: Any, classes: Sequence[str]) -> pd.DataFrame:
    """:func:`per_class_report` of the utterances behind confusion ``counts`` (rows true),
    e.g. a confusion summed over seeds. All NaN (support 0) when ``counts`` is all zero."""
    cm = np.asarray(counts, dtype=np.int64)
    n = len(classes)
    if cm.shape != (n, n) or np.any(cm < 0):
        raise MetricError(f"confusion counts must be a non-negative ({n}, {n}) matrix, got "
                          f"shape {cm.shape}")
    if cm.sum() == 0:
        nan = np.full(n, np.nan)
        return pd.DataFrame({"precision": nan, "recall": nan, "f1": nan,
                             "support": np.zeros(n, dtype=int)},
                            index=pd.Index([str(c) for c in classes], name="class"))
    cells = np.repeat(np.arange(n * n), cm.ravel())
    return per_class_report(cells // n, cells % n, classes)


# --------------------------------------------------------------------------- bootstrap


def _ua_of_codes(codes: np.ndarray, n_classes: int) -> np.ndarray:
    """UA of each row of pair codes ``y_true * n_classes + y_pred`` (shape ``(..., n)``).

    The vectorised statistic of :func:`bootstrap_ci`: scikit-learn scores one resample per
    call (milliseconds each), far too slow for thousands of resamples times seeds. It is the
    same rule as :func:`unweighted_average_recall` (tested against it): mean recall over the
    classes present in each row.
    """
    codes = np.asarray(codes, dtype=np.int64)
    batch = codes.shape[:-1]
    flat = codes.reshape(-1, codes.shape[-1])
    rows, k2 = len(flat), n_classes * n_classes
    offsets = (np.arange(rows) * k2)[:, None]
    cm = np.bincount((flat + offsets).ravel(), minlength=rows * k2).reshape(
        rows, n_classes, n_classes)
    support = cm.sum(axis=2)
    hits = np.diagonal(cm, axis1=1, axis2=2)
    present = support > 0
    recall = np.divide(hits, support, out=np.zeros(support.shape), where=present)
    return (recall.sum(axis=1) / present.sum(axis=1)).reshape(batch)


def _percentile_bootstrap(samples: Sequence[np.ndarray], statistic: Callable[..., Any],
                          vectorized: bool, n_resamples: int, confidence: float,
                          seed: int) -> tuple[float, float]:
    """Percentile CI of ``statistic(*samples)`` with each sample resampled on its own.

    The one bootstrap of the project, on :func:`scipy.stats.bootstrap`. A sample of one
    observation is the same in every resample (scipy refuses it), so it is held fixed;
    when every sample has one observation the distribution is a point and the CI is the
    point value ``(v, v)``.
    """
    if isinstance(n_resamples, bool) or int(n_resamples) < 1:
        raise MetricError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise MetricError(f"confidence must be in (0, 1), got {confidence!r}")
    moving = [i for i, s in enumerate(samples) if len(s) > 1]
    if not moving:
        value = float(statistic(*samples))
        return value, value

    def stat(*drawn: np.ndarray, axis: int = -1) -> Any:
        full = list(samples)
        for i, d in zip(moving, drawn, strict=True):
            full[i] = d
        if vectorized:  # give the fixed samples the batch shape of the drawn ones
            shape = drawn[0].shape[:-1]
            full = [f if i in moving else np.broadcast_to(f, (*shape, len(f)))
                    for i, f in enumerate(full)]
        return statistic(*full)

    # Bound memory: scipy materialises batch x n resampled indices at once.
    batch = max(1, 4_000_000 // max(len(samples[i]) for i in moving))
    from scipy.stats import bootstrap  # imported here: scipy.stats costs ~0.8 s at start-up

    res = bootstrap([samples[i] for i in moving], stat, n_resamples=int(n_resamples),
                    batch=batch, vectorized=vectorized, axis=-1, confidence_level=confidence,
                    method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


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

    Draws ``n_resamples`` resamples of the ``(y_true, y_pred)`` pairs with replacement
    (:func:`scipy.stats.bootstrap`, ``method="percentile"``, seeded by ``seed``) and returns
    the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of ``metric``. With
    ``stratify`` each true class is resampled within itself, keeping class supports fixed
    (every class stays in every resample, which keeps UA's class set fixed on small test
    sets). A single utterance (or, stratified, one per class) gives the point value as both
    bounds. Utterances are treated as independent; resampling speakers instead would give
    wider, more honest intervals on few speakers.
    """
    t, p, n = _indices(y_true, y_pred, None)
    codes = t * n + p  # one integer per (true, predicted) pair: resampled together
    groups = [codes[t == c] for c in np.unique(t)] if stratify else [codes]
    if metric is unweighted_average_recall:
        def stat(*parts: np.ndarray) -> Any:
            return _ua_of_codes(np.concatenate(parts, axis=-1), n)
        return _percentile_bootstrap(groups, stat, True, n_resamples, confidence, seed)

    def generic(*parts: np.ndarray) -> float:
        joined = np.concatenate(parts)
        return float(metric(joined // n, joined % n))

    return _percentile_bootstrap(groups, generic, False, n_resamples, confidence, seed)


def bootstrap_mean_ua(predictions: Sequence[tuple[Any, Any]], n_classes: int,
                      n_resamples: int = 1000, confidence: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean UA over seeds.

    Each resample redraws, with replacement, the test utterances of every seed (seeds may
    have different test sets when the split follows the seed) and averages the seeds' UAs,
    so the interval covers the test-set sampling of the reported mean. ``(nan, nan)`` when
    there is nothing to resample (no predictions, or ``n_resamples < 1``).
    """
    parts = []
    for y_true, y_pred in predictions:
        if len(y_true):
            t, p = _pair(y_true, y_pred, n_classes)
            parts.append(t * n_classes + p)
    if not parts or n_resamples < 1:
        return float("nan"), float("nan")

    def stat(*drawn: np.ndarray) -> Any:
        return np.mean([_ua_of_codes(d, n_classes) for d in drawn], axis=0)

    return _percentile_bootstrap(parts, stat, True, n_resamples, confidence, seed)


# --------------------------------------------------------------------------- evaluate


def _none_if_nan(x: float | None) -> float | None:
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
    where undefined), ``classes``, ``n`` and ``missing_classes``: the classes with no test
    utterance, which UA leaves out (UA is then over the present classes only; callers
    should say so).
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
    out["missing_classes"] = [c for c, row in report.iterrows() if row.support == 0]
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
    from sklearn.metrics import silhouette_score
    return float(silhouette_score(x, y, metric=metric, sample_size=sample_size,
                                  random_state=seed))
