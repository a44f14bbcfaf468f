"""``random_forest``: the wav2vec 2.0 + Deep-WCCN paper's baseline (section 4.6): a random
forest of 100 trees of depth 5 on utterance functionals (eGeMAPS, emobase), optionally after
a classical WCCN transform fitted on the training data (``wccn: true``, its section 5.3).

The forest is scikit-learn's :class:`~sklearn.ensemble.RandomForestClassifier` with its
parameters under the same names (``seed`` becomes ``random_state``). Saving never pickles:
each tree's node arrays (children, split feature, threshold, leaf class fractions) go to an
``.npz`` read back with ``allow_pickle=False``, and prediction walks those arrays in numpy,
the same code after ``fit`` and after ``load`` (it reproduces scikit-learn's
``predict_proba``: inputs compared in float32, as scikit-learn's trees do).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from emobridge.errors import ConfigError, EmobridgeError
from emobridge.methods.base import AdaptationMethod, register_method
from emobridge.methods.data import EmotionData
from emobridge.methods.normalise import FeatureNormaliser, Normalise
from emobridge.models.wccn import WCCNTransform
from emobridge.protocols import balance_by_repetition

__all__ = ["ForestArrays", "RandomForestMethod"]

_ARRAYS = ("left", "right", "feature", "threshold", "value", "offsets")


class ForestArrays:
    """The trees of a fitted forest as flat numpy arrays (no Python objects).

    Node arrays of every tree are concatenated; ``offsets[t]`` is the first node of tree
    ``t`` (children indices are local to their tree, ``-1`` at leaves). ``value`` holds
    each node's class fractions over the forest's ``n_classes`` columns.
    """

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    @classmethod
    def from_sklearn(cls, forest: Any, n_classes: int) -> ForestArrays:
        parts: dict[str, list[np.ndarray]] = {k: [] for k in _ARRAYS[:-1]}
        offsets = [0]
        columns = np.asarray(forest.classes_, dtype=np.int64)
        for estimator in forest.estimators_:
            tree = estimator.tree_
            value = np.asarray(tree.value[:, 0, :], dtype=np.float64)
            value = value / np.maximum(value.sum(axis=1, keepdims=True), 1e-300)
            full = np.zeros((tree.node_count, n_classes))
            full[:, columns] = value  # classes absent from training keep probability 0
            parts["left"].append(tree.children_left.astype(np.int64))
            parts["right"].append(tree.children_right.astype(np.int64))
            parts["feature"].append(tree.feature.astype(np.int64))
            parts["threshold"].append(tree.threshold.astype(np.float64))
            parts["value"].append(full)
            offsets.append(offsets[-1] + tree.node_count)
        arrays = {k: np.concatenate(v) for k, v in parts.items()}
        arrays["offsets"] = np.asarray(offsets, dtype=np.int64)
        return cls(arrays)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Mean over trees of the class fractions of the leaf each row reaches."""
        a = self.arrays
        x = np.asarray(x, dtype=np.float32).astype(np.float64)  # sklearn splits in float32
        rows = np.arange(len(x))
        total = np.zeros((len(x), a["value"].shape[1]))
        n_trees = len(a["offsets"]) - 1
        for t in range(n_trees):
            base = int(a["offsets"][t])
            node = np.zeros(len(x), dtype=np.int64)
            while True:
                left = a["left"][base + node]
                inner = left >= 0
                if not inner.any():
                    break
                go_left = x[rows, np.maximum(a["feature"][base + node], 0)] \
                    <= a["threshold"][base + node]
                nxt = np.where(go_left, left, a["right"][base + node])
                node = np.where(inner, nxt, node)
            total += a["value"][base + node]
        return total / max(n_trees, 1)


@register_method
class RandomForestMethod(AdaptationMethod):
    """Random forest on utterance vectors, optional WCCN first (see the module docstring).

    Trains on ``source`` plus ``target_labelled`` (few-shot); other inputs are ignored.

    Parameters
    ----------
    n_estimators, max_depth, criterion, min_samples_split, min_samples_leaf, max_features,
    bootstrap, class_weight, n_jobs:
        scikit-learn's :class:`~sklearn.ensemble.RandomForestClassifier` parameters (paper:
        100 trees, depth 5).
    wccn:
        Fit a classical WCCN transform on the training vectors and apply it first.
    wccn_smoothing:
        Its smoothing toward the identity, in [0, 1].
    balance_languages:
        Repeat smaller training languages to the size of the largest (the paper's section
        4.3; the few-shot target rows count as one more language).
    normalise:
        Standardisation before WCCN and the forest (see
        :class:`~emobridge.methods.normalise.FeatureNormaliser`). Default ``"per_corpus"``:
        trees split on absolute thresholds, so a corpus recorded at another level (EMO-DB
        is peak-normalised, RAVDESS is not) falls on one side of them; on raw eGeMAPS,
        RAVDESS -> EMO-DB predicted one class. ``"none"`` gives the paper's raw functionals.
    seed:
        ``random_state`` of the forest.
    """

    name = "random_forest"

    def __init__(
        self,
        *,
        n_estimators: int = 100,
        max_depth: int | None = 5,
        criterion: Literal["gini", "entropy", "log_loss"] = "gini",
        min_samples_split: int = 2,
        min_samples_leaf: int = 1,
        max_features: float | Literal["sqrt", "log2"] | None = "sqrt",
        bootstrap: bool = True,
        class_weight: Literal["balanced", "balanced_subsample"] | None = None,
        n_jobs: int | None = 1,
        wccn: bool = False,
        wccn_smoothing: float = 0.0,
        balance_languages: bool = True,
        normalise: Normalise = "per_corpus",
        seed: int = 0,
    ) -> None:
        self._store_params(locals())

    def _forest(self) -> Any:
        from sklearn.ensemble import RandomForestClassifier

        try:
            return RandomForestClassifier(
                n_estimators=self.n_estimators, max_depth=self.max_depth,
                criterion=self.criterion, min_samples_split=self.min_samples_split,
                min_samples_leaf=self.min_samples_leaf, max_features=self.max_features,
                bootstrap=self.bootstrap, class_weight=self.class_weight,
                n_jobs=self.n_jobs, random_state=self.seed)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"random_forest: {exc}") from None

    def _vectors(self, data: EmotionData, what: str) -> np.ndarray:
        if data.is_sequence:
            raise ConfigError(f"random_forest: needs one vector per utterance (functionals "
                              f"or pooled features); {what} has frame sequences")
        return self.normaliser_.transform(data).stacked().astype(np.float64)

    def fit(self, source: EmotionData, target_unlabelled: EmotionData | None = None,
            target_labelled: EmotionData | None = None,
            validation: EmotionData | None = None) -> RandomForestMethod:
        """Fit the (WCCN and) forest on source + ``target_labelled``."""
        self.check_settings()
        if not len(source) or not source.is_labelled:
            raise EmobridgeError("random_forest: source data must be non-empty and labelled")
        parts = [source] + ([target_labelled] if target_labelled is not None
                            and len(target_labelled) else [])
        train = EmotionData.concat(parts)
        self.classes_ = tuple(source.classes)
        self.input_dim_ = source.dim
        self.normaliser_ = FeatureNormaliser(self.normalise).fit(parts)
        x = self._vectors(train, "the training data")
        groups = train.languages.astype(str).copy()
        groups[len(source):] = "__target_labelled__"
        order = balance_by_repetition(groups) if self.balance_languages \
            else np.arange(len(train))
        self.wccn_ = None
        if self.wccn:
            self.wccn_ = WCCNTransform(self.wccn_smoothing).fit(x, train.labels)
            x = self.wccn_.transform(x)
        forest = self._forest().fit(x[order], train.labels[order])
        self.forest_ = ForestArrays.from_sklearn(forest, len(self.classes_))
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "forest_"):
            raise EmobridgeError("random_forest: call fit() (or load()) first")

    def embed(self, data: EmotionData) -> np.ndarray:
        """The vectors the forest sees (standardised, WCCN-transformed when enabled)."""
        self._check_fitted()  # before any fitted attribute is read
        if not len(data) or data.dim != self.input_dim_:
            raise EmobridgeError(f"random_forest: expects vectors of {self.input_dim_} dims, "
                                 f"got {len(data)} rows of {data.dim if len(data) else 0}")
        x = self._vectors(data, "the data")
        return x if self.wccn_ is None else self.wccn_.transform(x)

    def predict_proba(self, data: EmotionData) -> np.ndarray:
        self._check_fitted()
        return self.forest_.predict_proba(self.embed(data))

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON metadata (params, classes, normaliser settings) and named arrays (the
        trees' node arrays under ``forest.``, the WCCN projection, normaliser statistics)."""
        from emobridge import __version__
        from emobridge.methods.state import normaliser_state

        self._check_fitted()
        norm_meta, arrays = normaliser_state(self.normaliser_)
        arrays.update({f"forest.{k}": v for k, v in self.forest_.arrays.items()})
        if self.wccn_ is not None:
            arrays["wccn.projection"] = np.asarray(self.wccn_.projection_, dtype=np.float64)
        meta = {"method": self.name, "params": self.get_params(),
                "classes": list(self.classes_), "input_dim": self.input_dim_,
                "normaliser": norm_meta, "emobridge_version": __version__}
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray],
                   device: str | None = None) -> RandomForestMethod:
        """Rebuild from :meth:`get_state`'s output (``device`` is ignored: CPU only)."""
        from emobridge.methods.state import normaliser_from_state

        if meta.get("method") != cls.name:
            raise EmobridgeError(f"holds method {meta.get('method')!r}, not {cls.name!r}")
        method = cls(**{k: v for k, v in meta["params"].items() if k in cls.param_names()})
        method.classes_ = tuple(meta["classes"])
        method.input_dim_ = int(meta["input_dim"])
        method.normaliser_ = normaliser_from_state(meta["normaliser"], arrays)
        method.wccn_ = None
        if "wccn.projection" in arrays:
            method.wccn_ = WCCNTransform(method.wccn_smoothing)
            method.wccn_.projection_ = np.asarray(arrays["wccn.projection"], dtype=np.float64)
        try:
            method.forest_ = ForestArrays({k: np.asarray(arrays[f"forest.{k}"])
                                           for k in _ARRAYS})
        except KeyError as exc:
            raise EmobridgeError(f"random_forest: saved state lacks {exc}") from None
        return method
