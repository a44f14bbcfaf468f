"""One source -> target cell: manifest rows -> :class:`EmotionData` pieces -> fit -> metrics.

Both ``emobridge run`` (every cell of a grid, :mod:`emobridge.experiments.runner`) and
``emobridge train`` (one cell from two manifests) come through here:
:func:`emobridge.protocols.assemble_cell` decides the rows of each piece (speaker split,
few-shot draw, validation), :func:`cell_data` turns them into features, and
:func:`fit_and_evaluate` fits the method and scores it.

What each method sees:

- ``source``: labelled source training speakers;
- ``target_unlabelled``: every target training utterance with its label hidden;
- ``target_labelled``: ``k`` of those utterances with labels (few-shot,
  :func:`emobridge.protocols.few_shot_subset`), all of them (``k="all"``, the upper
  bound), or nothing;
- ``validation``: held-out source speakers (the default: no target label is read), the
  labelled target validation speakers, both, or none.
"""

from __future__ import annotations

import os
import platform
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from emobridge.errors import EmobridgeWarning
from emobridge.methods.base import AdaptationMethod
from emobridge.methods.data import EmotionData
from emobridge.protocols import CellRows

#: Features of a frame's rows, in row order.
FeatureLookup = Callable[[pd.DataFrame], Sequence[np.ndarray]]


@dataclass
class ExperimentData:
    """The pieces of one cell, plus its rows and what the label mapping dropped."""

    source: EmotionData
    target_unlabelled: EmotionData | None
    target_labelled: EmotionData | None
    validation: EmotionData | None
    test: EmotionData
    classes: tuple[str, ...]
    rows: CellRows
    source_test: EmotionData | None = None
    label_reports: dict[str, str] = field(default_factory=dict)
    extractor_id: str = ""

    @property
    def split(self):  # -> emobridge.protocols.CrossCorpusSplit
        """The speaker-disjoint pieces."""
        return self.rows.split

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


def needs_target_labels(method_cls: type) -> bool:
    """Whether a method class trains on every labelled target utterance (an upper bound)
    rather than on ``k`` of them: its ``needs_target_labels`` class attribute."""
    return bool(getattr(method_cls, "needs_target_labels", False))


def cell_data(rows: CellRows, features: FeatureLookup, classes: Sequence[str]) -> ExperimentData:
    """:class:`EmotionData` for every piece of ``rows``; ``features(frame)`` gives the
    features of a frame's rows. Raises when the source split left no training rows."""
    from emobridge.errors import ConfigError

    classes = tuple(classes)

    def piece(frame: pd.DataFrame, labelled: bool = True) -> EmotionData | None:
        if frame is None or frame.empty:
            return None
        return EmotionData.from_manifest(frame, list(features(frame)), classes,
                                         labelled=labelled)

    split = rows.split
    source, test = piece(split.source_train), piece(split.target_test)
    if source is None or test is None:
        raise ConfigError("the speaker split left no source training or target test speakers")
    _check_source_classes(source, classes)
    return ExperimentData(
        source=source, target_unlabelled=piece(rows.unlabelled, labelled=False),
        target_labelled=piece(rows.labelled), validation=piece(rows.validation), test=test,
        classes=classes, rows=rows, source_test=piece(split.source_test))


def _check_source_classes(source: EmotionData, classes: tuple[str, ...]) -> None:
    """One emotion in the source training rows is nothing to learn (an error); a few missing
    ones cannot be predicted (a warning naming them)."""
    from emobridge.errors import ConfigError

    present = set(np.unique(source.labels).tolist())
    absent = [c for i, c in enumerate(classes) if i not in present]
    if len(present) < 2:
        raise ConfigError(f"the source training speakers carry a single emotion "
                          f"({', '.join(c for i, c in enumerate(classes) if i in present)}): "
                          "nothing to learn; check the label mapping")
    if absent:
        warnings.warn(f"the source training speakers have no {', '.join(absent)} utterances: "
                      "the model cannot predict them", EmobridgeWarning, stacklevel=2)


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
    target_labelled_k: int | str = 0,
    validation: str = "source",
    source_ratios: Sequence[float] = (0.8, 0.2, 0.0),
    compute_missing: bool = False,
    source_mapping: Mapping[str, str] | None = None,
    target_mapping: Mapping[str, str] | None = None,
    device: str | None = None,
) -> ExperimentData:
    """One cell from two manifests and a feature store (what ``emobridge train`` runs).

    Labels: ``source_mapping`` / ``target_mapping`` rename each corpus's labels first, then
    ``label_set`` with its global ``mapping`` applies. Rows: :func:`assemble_cell` with
    ``target_labelled_k`` as its ``k`` (labelled target utterances or ``"all"``),
    ``validation`` and the ratios.
    ``store`` is a folder or a :class:`~emobridge.features.store.FeatureStore`;
    ``extractor`` a spec or an extractor. Missing features raise
    :class:`~emobridge.errors.FeatureError` unless ``compute_missing`` (computed on
    ``device`` when the extractor takes one).
    """
    from emobridge.corpora.taxonomy import LabelSet
    from emobridge.features import FeatureStore, build_extractor
    from emobridge.protocols import assemble_cell

    labels = LabelSet.named(label_set, mapping)
    src, src_note = apply_corpus_mapping(_read(source_manifest), source_mapping)
    tgt, tgt_note = apply_corpus_mapping(_read(target_manifest), target_mapping)
    src, src_report = labels.apply(src)
    tgt, tgt_report = labels.apply(tgt)
    rows = assemble_cell(src, tgt, k=target_labelled_k, validation=validation, seed=seed,
                         target_ratios=target_ratios, source_ratios=source_ratios)
    fstore = store if isinstance(store, FeatureStore) else FeatureStore(store)
    ext = extractor if hasattr(extractor, "extract") else build_extractor(extractor,
                                                                          device=device)
    data = cell_data(rows, lambda f: fstore.load(f, ext, compute_missing=compute_missing),
                     labels.classes)
    data.label_reports = {"source": "; ".join(filter(None, [src_note, src_report.summary()])),
                          "target": "; ".join(filter(None, [tgt_note, tgt_report.summary()]))}
    data.extractor_id = ext.id
    return data


def apply_corpus_mapping(manifest: pd.DataFrame, mapping: Mapping[str, str | None] | None
                         ) -> tuple[pd.DataFrame, str]:
    """Rename one corpus's ``emotion`` values before the label set sees them (``calm`` is
    neutral in one corpus and a class of its own in another). A ``None`` target drops those
    rows. Returns the frame and a summary of what changed ("" when nothing)."""
    if not mapping:
        return manifest, ""
    emotion = manifest["emotion"].astype(str)
    counts = emotion[emotion.isin(list(mapping))].value_counts()
    if counts.empty:
        return manifest, ""
    out = manifest.copy()
    out["emotion"] = emotion.map(lambda e: mapping.get(e, e) if e in mapping else e)
    out = out[out["emotion"].notna()]
    parts = [f"{e} -> {mapping[e] if mapping[e] is not None else 'dropped'}: {n}"
             for e, n in sorted(counts.items())]
    return out, "corpus mapping " + ", ".join(parts)


def missing_classes(data: EmotionData, classes: Sequence[str], what: str) -> list[str]:
    """Classes absent from ``data``'s labels, with an :class:`EmobridgeWarning` naming them
    (UA then averages over the present classes only)."""
    present = set(np.asarray(data.labels).tolist())
    missing = [c for i, c in enumerate(classes) if i not in present]
    if missing:
        warnings.warn(f"{what} has no utterance of class(es) {', '.join(missing)}: UA is the "
                      f"mean recall over the other {len(classes) - len(missing)}",
                      EmobridgeWarning, stacklevel=2)
    return missing


def fit_and_evaluate(method: AdaptationMethod, data: ExperimentData,
                     bootstrap_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Fit ``method`` on ``data`` and score it on the target test speakers.

    Returns a JSON-ready dict (but for ``test_proba``): ``test`` (:func:`emobridge.metrics.
    evaluate`: UA, WA, macro-F1, UA bootstrap CI, confusion, per class), ``source`` (same,
    on held-out source test speakers, or ``None``), ``validation`` (without CI, or
    ``None``), ``missing_classes`` (test classes without utterances), ``history``,
    ``best_epoch``, ``fit_report`` (:meth:`AdaptationMethod.fit_report`), ``test_proba`` and
    ``source_pred`` (arrays).
    """
    from emobridge.metrics import evaluate

    method.fit(data.source, data.target_unlabelled, data.target_labelled, data.validation)
    ci = bootstrap_resamples > 0
    n_boot = max(bootstrap_resamples, 1)
    proba = np.asarray(method.predict_proba(data.test))
    out: dict[str, Any] = {
        "test": evaluate(data.test.labels, proba, data.classes, ci=ci, n_resamples=n_boot,
                         seed=seed),
        "missing_classes": missing_classes(data.test, data.classes, "the target test set"),
        "source": None, "validation": None, "test_proba": proba, "source_pred": None,
    }
    if data.source_test is not None:
        out["source_pred"] = np.asarray(method.predict(data.source_test))
        out["source"] = evaluate(data.source_test.labels, out["source_pred"], data.classes,
                                 ci=ci, n_resamples=n_boot, seed=seed)
    if data.validation is not None:
        out["validation"] = evaluate(data.validation.labels, method.predict_proba(
            data.validation), data.classes, ci=False)
    out["fit_report"] = method.fit_report()
    out["history"] = list(getattr(method, "history_", None) or [])
    out["best_epoch"] = getattr(getattr(method, "train_result_", None), "best_epoch", None)
    return out


def predictions_table(data: ExperimentData, proba: np.ndarray) -> pd.DataFrame:
    """Per test utterance: id, speaker, true and predicted class, one ``p_<class>`` column
    per class."""
    pred = proba.argmax(axis=1)
    table = pd.DataFrame({
        "id": data.test.ids, "speaker": data.test.speakers,
        "true": [data.classes[i] for i in data.test.labels],
        "predicted": [data.classes[i] for i in pred],
    })
    for j, c in enumerate(data.classes):
        table[f"p_{c}"] = proba[:, j].astype(np.float64)
    return table


def environment() -> dict[str, str]:
    """Versions worth recording next to results."""
    import torch

    from emobridge import __version__

    return {"emobridge": __version__, "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version()}
