"""The shared emotion taxonomy: canonical names, named label sets, mappings.

Readers translate each corpus's own label into a *canonical emotion* (``anger``,
``happiness``...). Experiments then choose a *label set* (``4class``...) and an optional
*mapping* that folds further canonical emotions into it (``calm -> neutral``). Utterances whose
emotion is still outside the set are dropped by default and the drop is counted, or raise with
``policy="error"``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

from emobridge.errors import LabelError

#: Every canonical emotion a reader may produce.
CANONICAL_EMOTIONS: tuple[str, ...] = (
    "anger",
    "boredom",
    "calm",
    "contempt",
    "disgust",
    "excitement",
    "fear",
    "frustration",
    "happiness",
    "neutral",
    "other",
    "sadness",
    "surprise",
)

#: Named label sets. Order fixes the class index used by every model.
LABEL_SETS: dict[str, tuple[str, ...]] = {
    "4class": ("anger", "happiness", "neutral", "sadness"),
    "5class": ("anger", "fear", "happiness", "neutral", "sadness"),
    "6class": ("anger", "disgust", "fear", "happiness", "neutral", "sadness"),
    "7class": ("anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness"),
}

#: Common spellings in corpus labels and user configs -> canonical emotion.
SYNONYMS: dict[str, str] = {
    "angry": "anger", "ang": "anger", "mad": "anger",
    "happy": "happiness", "hap": "happiness", "joy": "happiness", "joyful": "happiness",
    "pleasant_surprise": "surprise", "ps": "surprise", "surprised": "surprise", "sur": "surprise",
    "sad": "sadness", "sadness": "sadness",
    "neu": "neutral", "neutrality": "neutral",
    "fearful": "fear", "fea": "fear", "scared": "fear",
    "disgusted": "disgust", "dis": "disgust",
    "bored": "boredom",
    "excited": "excitement", "exc": "excitement",
    "frustrated": "frustration", "fru": "frustration",
    "oth": "other", "xxx": "other",
}


def canonical_emotion(label: str) -> str:
    """Return the canonical emotion for a label name or common synonym.

    Raises :class:`LabelError` naming the label when it is unknown.
    """
    key = label.strip().lower().replace(" ", "_").replace("-", "_")
    key = SYNONYMS.get(key, key)
    if key not in CANONICAL_EMOTIONS:
        raise LabelError(
            f"unknown emotion label {label!r}; "
            f"canonical emotions are {', '.join(CANONICAL_EMOTIONS)}"
        )
    return key


@dataclass(frozen=True)
class LabelSet:
    """An ordered set of classes plus a mapping of further emotions into it.

    Parameters
    ----------
    classes:
        Canonical emotions, in class-index order.
    mapping:
        Extra canonical emotion -> class (e.g. ``{"calm": "neutral", "excitement": "happiness"}``).
    policy:
        What to do with an utterance whose emotion is outside the set after mapping:
        ``"drop"`` (counted in :attr:`ApplyReport.dropped`) or ``"error"``.
    """

    classes: tuple[str, ...]
    mapping: Mapping[str, str] = field(default_factory=dict)
    policy: Literal["drop", "error"] = "drop"

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise LabelError(f"a label set needs at least two classes, got {self.classes!r}")
        if len(set(self.classes)) != len(self.classes):
            raise LabelError(f"duplicate class in label set {self.classes!r}")
        for c in self.classes:
            canonical_emotion(c)
        mapped = {canonical_emotion(k): canonical_emotion(v) for k, v in self.mapping.items()}
        for source, target in mapped.items():
            if target not in self.classes:
                raise LabelError(
                    f"mapping {source!r} -> {target!r}: {target!r} is not in the label set "
                    f"{list(self.classes)}"
                )
        object.__setattr__(self, "mapping", mapped)
        if self.policy not in ("drop", "error"):
            raise LabelError(f"policy must be 'drop' or 'error', got {self.policy!r}")

    @classmethod
    def named(
        cls,
        name: str,
        mapping: Mapping[str, str] | None = None,
        policy: Literal["drop", "error"] = "drop",
    ) -> LabelSet:
        """Build one of :data:`LABEL_SETS` by name, with an optional extra mapping."""
        if name not in LABEL_SETS:
            raise LabelError(f"unknown label set {name!r}; known: {', '.join(LABEL_SETS)}")
        return cls(LABEL_SETS[name], dict(mapping or {}), policy)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def map_emotion(self, emotion: str) -> str | None:
        """Class for a canonical emotion, or ``None`` when it falls outside the set."""
        emotion = self.mapping.get(emotion, emotion)
        return emotion if emotion in self.classes else None

    def index(self, emotion: str) -> int:
        """Class index of a class name."""
        try:
            return self.classes.index(emotion)
        except ValueError:
            raise LabelError(f"{emotion!r} is not in the label set {list(self.classes)}") from None

    def apply(self, manifest: pd.DataFrame) -> tuple[pd.DataFrame, ApplyReport]:
        """Map the manifest's ``emotion`` column into this set.

        Returns the kept rows (``emotion`` replaced by the class name, a new ``label_index``
        column) and a report of what was mapped and dropped.
        """
        mapped = manifest["emotion"].map(self.map_emotion)
        outside = mapped.isna()
        dropped = Counter(manifest.loc[outside, "emotion"])
        if outside.any() and self.policy == "error":
            example = manifest.loc[outside].iloc[0]
            raise LabelError(
                f"{int(outside.sum())} utterances have emotions outside {list(self.classes)} "
                f"({dict(dropped)}); first: {example['path']} ({example['emotion']!r})"
            )
        kept = manifest.loc[~outside].copy()
        kept["emotion"] = mapped[~outside].astype(str)
        kept["label_index"] = kept["emotion"].map(self.classes.index).astype("int64")
        remapped = Counter(
            e for e in manifest.loc[~outside, "emotion"] if e in self.mapping
        )
        return kept.reset_index(drop=True), ApplyReport(dict(dropped), dict(remapped))


@dataclass(frozen=True)
class ApplyReport:
    """What :meth:`LabelSet.apply` did: per-emotion drop and remap counts."""

    dropped: dict[str, int]
    remapped: dict[str, int]

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        parts = []
        if self.remapped:
            parts.append("remapped " + ", ".join(f"{k}: {v}" for k, v in self.remapped.items()))
        if self.dropped:
            parts.append(
                f"dropped {self.n_dropped} outside the label set ("
                + ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items()))
                + ")"
            )
        return "; ".join(parts) or "all utterances inside the label set"
