"""One source -> target experiment: manifests + feature store -> :class:`EmotionData` pieces,
fit a method, evaluate on the held-out target speakers. ``emobridge train`` is a thin layer
over :func:`load_experiment_data` and :func:`run_experiment`.

Split (speaker-independent, :func:`emobridge.protocols.cross_corpus_split`): the target's
speakers are divided into train (the unlabelled adaptation pool and the pool few-shot labels
come from), validation and test by ``target_ratios``; the source is used whole, unless
``validation="source"`` holds out ``source_validation_ratio`` of its speakers.

What each method sees:

- ``source``: labelled source training speakers;
- ``target_unlabelled``: the target training speakers with labels hidden;
- ``target_labelled``: ``k`` labelled target training utterances (few-shot,
  :func:`emobridge.protocols.few_shot_subset`), every target training utterance when
  ``all_target_labels`` (the ``supervised`` upper bound), or nothing;
- ``validation``: the labelled target validation speakers (``validation="target"``, model
  selection with target labels, as commonly reported), held-out source speakers
  (``"source"``: no target label is read at all), or none.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from emobridge.errors import ConfigError
from emobridge.methods.base import AdaptationMethod
from emobridge.methods.data import EmotionData

ValidationSource = Literal["target", "source", "none"]


@dataclass
class ExperimentData:
    """The pieces of one experiment, plus the split and what the label mapping dropped."""

    source: EmotionData
    target_unlabelled: EmotionData | None
    target_labelled: EmotionData | None
    validation: EmotionData | None
    test: EmotionData
    classes: tuple[str, ...]
    split: Any  # emobridge.protocols.CrossCorpusSplit
    label_reports: dict[str, str] = field(default_factory=dict)
    extractor_id: str = ""

    def summary(self) -> dict[str, Any]:
        """Sizes and speakers of every piece (JSON-ready)."""
        def describe(d: EmotionData | None) -> dict[str, Any]:
            if d is None:
                return {"utterances": 0, "speakers": []}
            return {"utterances": len(d), "speakers": sorted({str(s) for s in d.speakers})}

        return {"source": describe(self.source),
                "target_unlabelled": describe(self.target_unlabelled),
                "target_labelled": describe(self.target_labelled),
                "validation": describe(self.validation), "test": describe(self.test),
                "classes": list(self.classes), "label_mapping": self.label_reports,
                "extractor_id": self.extractor_id}


def _read(manifest: str | os.PathLike[str] | pd.DataFrame) -> pd.DataFrame:
    if isinstance(manifest, pd.DataFrame):
        return manifest
    from emobridge.corpora.manifest import read_manifest

    return read_manifest(manifest)


def load_experiment_data(
    source_manifest: str | os.PathLike[str] | pd.DataFrame,
    target_manifest: str | os.PathLike[str] | pd.DataFrame,
    store: str | os.PathLike[str] | Any,
    extractor: str | Mapping[str, Any] | Any,
    label_set: str = "4class",
    mapping: Mapping[str, str] | None = None,
    seed: int = 0,
    target_ratios: Sequence[float] = (0.6, 0.2, 0.2),
    target_labelled_k: int | None = None,
    all_target_labels: bool = False,
    validation: ValidationSource = "target",
    source_validation_ratio: float = 0.2,
    compute_missing: bool = False,
) -> ExperimentData:
    """Map labels, split speakers, load features from the store (see the module docstring).

    ``store`` is a folder or a :class:`~emobridge.features.store.FeatureStore`; ``extractor``
    a spec or an extractor. Missing features raise
    :class:`~emobridge.errors.FeatureError` unless ``compute_missing``.
    """
    from emobridge.corpora.taxonomy import LabelSet
    from emobridge.features import FeatureStore, build_extractor
    from emobridge.protocols import cross_corpus_split, few_shot_subset

    if validation not in ("target", "source", "none"):
        raise ConfigError(f"validation must be 'target', 'source' or 'none', got "
                          f"{validation!r}")
    if target_labelled_k is not None and all_target_labels:
        raise ConfigError("give either target_labelled_k (few-shot) or all_target_labels")
    labels = LabelSet.named(label_set, mapping)
    src, src_report = labels.apply(_read(source_manifest))
    tgt, tgt_report = labels.apply(_read(target_manifest))
    split = cross_corpus_split(
        src, tgt, target_ratios=target_ratios, seed=seed,
        source_validation_ratio=source_validation_ratio if validation == "source" else 0.0)
    if len(split.target_test) == 0:
        raise ConfigError(f"target_ratios {tuple(target_ratios)} leave no target test speakers")
    fstore = store if isinstance(store, FeatureStore) else FeatureStore(store)
    ext = extractor if hasattr(extractor, "extract") else build_extractor(extractor)
    classes = labels.classes

    def piece(frame: pd.DataFrame, labelled: bool = True) -> EmotionData | None:
        if frame is None or not len(frame):
            return None
        feats = fstore.load(frame, ext, compute_missing=compute_missing)
        return EmotionData.from_manifest(frame, feats, classes, labelled=labelled)

    source = piece(split.source_train)
    target_train = piece(split.target_train)
    target_labelled = None
    if all_target_labels:
        target_labelled = target_train
    elif target_labelled_k:
        target_labelled = piece(few_shot_subset(split.target_train, target_labelled_k, seed))
    if validation == "target":
        val = piece(split.target_validation)
    elif validation == "source":
        val = piece(split.source_validation)
    else:
        val = None
    test = piece(split.target_test)
    assert source is not None and test is not None
    return ExperimentData(
        source=source,
        target_unlabelled=target_train.without_labels() if target_train is not None else None,
        target_labelled=target_labelled, validation=val, test=test, classes=classes,
        split=split, label_reports={"source": src_report.summary(),
                                    "target": tgt_report.summary()},
        extractor_id=ext.id)


def run_experiment(method: AdaptationMethod, data: ExperimentData,
                   bootstrap_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Fit ``method`` and evaluate it on ``data.test``.

    Returns a JSON-ready dict: ``test`` (:func:`emobridge.metrics.evaluate`: UA, WA, macro-F1,
    UA bootstrap CI, confusion, per class), ``validation`` (same without CI, when there is
    validation data), ``history``, ``best_epoch``, ``predictions`` (a DataFrame: id, speaker,
    true, predicted class, one probability column per class).
    """
    from emobridge.metrics import evaluate

    method.fit(data.source, data.target_unlabelled, data.target_labelled, data.validation)
    proba = method.predict_proba(data.test)
    out: dict[str, Any] = {
        "test": evaluate(data.test.labels, proba, data.classes, ci=bootstrap_resamples > 0,
                         n_resamples=max(bootstrap_resamples, 1), seed=seed),
    }
    if data.validation is not None:
        out["validation"] = evaluate(data.validation.labels, method.predict_proba(
            data.validation), data.classes, ci=False)
    result = getattr(method, "train_result_", None)
    out["history"] = list(getattr(method, "history_", []) or [])
    out["best_epoch"] = getattr(result, "best_epoch", None)
    pred = proba.argmax(axis=1)
    table = pd.DataFrame({
        "id": data.test.ids, "speaker": data.test.speakers,
        "true": [data.classes[i] for i in data.test.labels],
        "predicted": [data.classes[i] for i in pred],
    })
    for j, c in enumerate(data.classes):
        table[f"p_{c}"] = proba[:, j].astype(np.float64)
    out["predictions"] = table
    return out


def environment() -> dict[str, str]:
    """Versions worth recording next to results."""
    import torch

    from emobridge import __version__

    return {"emobridge": __version__, "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version()}
