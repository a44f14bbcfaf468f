"""The data every method takes: features aligned with labels, speakers and languages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from emobridge.errors import EmobridgeError

#: Label value of an utterance whose emotion is unknown (unlabelled target data).
UNLABELLED = -1


@dataclass
class EmotionData:
    """Features of a set of utterances plus what is known about each.

    Attributes
    ----------
    features:
        One array per utterance: ``(frames, dims)`` (variable ``frames``) or ``(dims,)``.
    labels:
        int64 class indices into ``classes``; :data:`UNLABELLED` (-1) where unknown.
    speakers, languages, ids:
        Per-utterance strings (``ids`` are the manifest paths).
    classes:
        Class names in index order (the label set).
    """

    features: list[np.ndarray]
    labels: np.ndarray
    speakers: np.ndarray
    languages: np.ndarray
    ids: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.features)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.speakers = np.asarray(self.speakers, dtype=object)
        self.languages = np.asarray(self.languages, dtype=object)
        self.ids = np.asarray(self.ids, dtype=object)
        for name in ("labels", "speakers", "languages", "ids"):
            if len(getattr(self, name)) != n:
                raise EmobridgeError(
                    f"EmotionData: {name} has {len(getattr(self, name))} entries, features {n}"
                )
        if n and self.labels.max(initial=-1) >= len(self.classes):
            raise EmobridgeError(
                f"EmotionData: label {self.labels.max()} outside classes {self.classes}"
            )
        ndims = {f.ndim for f in self.features}
        if len(ndims) > 1:
            raise EmobridgeError("EmotionData: mixes frame matrices and vectors")

    def __len__(self) -> int:
        return len(self.features)

    @property
    def is_sequence(self) -> bool:
        """True when features are frames x dims matrices."""
        return bool(self.features) and self.features[0].ndim == 2

    @property
    def dim(self) -> int:
        """Feature dimension (last axis)."""
        return int(self.features[0].shape[-1])

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def is_labelled(self) -> bool:
        """True when every utterance has a label."""
        return bool(len(self)) and bool(np.all(self.labels != UNLABELLED))

    def subset(self, index: Sequence[int] | np.ndarray) -> EmotionData:
        """Rows ``index`` (integer positions or a boolean mask)."""
        idx = np.arange(len(self))[np.asarray(index)] if len(self) else np.asarray(index, int)
        return EmotionData(
            [self.features[i] for i in idx], self.labels[idx], self.speakers[idx],
            self.languages[idx], self.ids[idx], self.classes,
        )

    def without_labels(self) -> EmotionData:
        """A copy whose labels are all :data:`UNLABELLED` (what an unsupervised method sees)."""
        return EmotionData(list(self.features), np.full(len(self), UNLABELLED),
                           self.speakers, self.languages, self.ids, self.classes)

    def stacked(self) -> np.ndarray:
        """Vectors as one ``(n, dims)`` array; frame matrices are mean-pooled over time."""
        if not len(self):
            return np.zeros((0, 0), dtype=np.float32)
        if self.is_sequence:
            return np.stack([f.mean(axis=0) for f in self.features]).astype(np.float32)
        return np.stack(self.features).astype(np.float32)

    @classmethod
    def from_manifest(
        cls,
        manifest: pd.DataFrame,
        features: Sequence[np.ndarray],
        classes: Sequence[str],
        labelled: bool = True,
    ) -> EmotionData:
        """Align features (in manifest row order) with a manifest mapped to ``classes``.

        The manifest must carry the canonical ``emotion`` column inside ``classes`` (see
        :meth:`emobridge.corpora.taxonomy.LabelSet.apply`). ``labelled=False`` hides labels.
        """
        if len(features) != len(manifest):
            raise EmobridgeError(
                f"{len(features)} feature arrays for a manifest of {len(manifest)} rows"
            )
        classes = tuple(classes)
        if labelled:
            unknown = sorted(set(manifest["emotion"]) - set(classes))
            if unknown:
                raise EmobridgeError(
                    f"manifest emotions {unknown} are not in classes {list(classes)}; "
                    "apply a LabelSet first"
                )
            labels = manifest["emotion"].map(classes.index).to_numpy(np.int64)
        else:
            labels = np.full(len(manifest), UNLABELLED, dtype=np.int64)
        return cls(list(features), labels, manifest["speaker"].to_numpy(object),
                   manifest["language"].to_numpy(object), manifest["path"].to_numpy(object),
                   classes)

    @staticmethod
    def concat(parts: Sequence[EmotionData]) -> EmotionData:
        """Join datasets that share the same classes."""
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            raise EmobridgeError("EmotionData.concat: nothing to join")
        classes = parts[0].classes
        if any(p.classes != classes for p in parts):
            raise EmobridgeError("EmotionData.concat: parts have different classes")
        return EmotionData(
            [f for p in parts for f in p.features],
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.speakers for p in parts]),
            np.concatenate([p.languages for p in parts]),
            np.concatenate([p.ids for p in parts]),
            classes,
        )
