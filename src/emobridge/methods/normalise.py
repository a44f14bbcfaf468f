"""Per-dimension standardisation of features, fitted on training data (global, per
language, per speaker)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from emobridge.errors import ConfigError, EmobridgeError
from emobridge.methods.data import EmotionData

Normalise = Literal["global", "per_corpus", "per_speaker", "none"]

__all__ = ["FeatureNormaliser", "Normalise"]


class FeatureNormaliser:
    """Per-dimension z-scoring of features, fitted on training data.

    Modes
    -----
    ``global``
        One mean / std over every frame (or vector) of the fitting data.
    ``per_corpus``
        One mean / std per language (:class:`EmotionData` carries languages, not corpus names,
        so corpora of one language share statistics). At prediction time a language seen in
        fitting uses its stored statistics; an unseen language is standardised with the
        statistics of the data being predicted (transductive, as usual for per-corpus
        normalisation in cross-corpus SER).
    ``per_speaker``
        Each speaker's utterances z-scored with that speaker's own statistics, at training and
        prediction time alike (speaker ids come with the data). Removes speaker and channel
        offsets; needs several utterances per speaker (a speaker with a single vector becomes
        all zeros).
    ``none``
        Features pass through unchanged (as float32).

    ``min_speaker_utterances`` (per-speaker mode): a speaker with fewer utterances than this
    is standardised with its language's statistics instead of its own (stored from fitting,
    else those of the data being predicted); the default 1 keeps every speaker on its own.

    Class-balanced speaker statistics (per-speaker mode, ``fit(..., weights=...)``): a
    speaker's plain mean and std depend on which emotions it happens to show, so a speaker
    who is mostly angry has anger subtracted from every utterance. Given class weights for
    each utterance (one-hot labels, or a first model's posteriors for unlabelled data), the
    speaker's statistics become those of an equal mixture of its classes: the mean of its
    weighted class means, and the variance of that mixture. Classes with a weight mass below
    one utterance are left out; a speaker left with fewer than two classes keeps plain
    statistics. These statistics are kept for the fitted speakers (``speaker_stats_``, not
    saved: a bundle predicts new speakers with their own or its stored statistics).

    Per-corpus / per-speaker z-scoring helps cross-corpus transfer a lot: it removes much of the
    recording-condition and speaker shift. Target statistics estimated from unlabelled target
    data are legitimate in unsupervised adaptation (no labels are read). Dimensions with a std
    below ``eps`` are only centred.
    """

    MODES = ("global", "per_corpus", "per_speaker", "none")

    def __init__(self, mode: Normalise = "global", eps: float = 1e-5,
                 min_speaker_utterances: int = 1) -> None:
        if mode not in self.MODES:
            raise ConfigError(f"normalise must be one of {self.MODES}, got {mode!r}")
        if not isinstance(min_speaker_utterances, int) or min_speaker_utterances < 1:
            raise ConfigError(f"min_speaker_utterances must be an int >= 1, got "
                              f"{min_speaker_utterances!r}")
        self.mode = mode
        self.eps = eps
        self.min_speaker_utterances = min_speaker_utterances
        self.stats_: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.speaker_stats_: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @staticmethod
    def _stats(features: Sequence[np.ndarray], eps: float) -> tuple[np.ndarray, np.ndarray]:
        # Running sums in float64: concatenating every frame of a corpus would not fit memory.
        total = np.zeros(features[0].shape[-1])
        total_sq = np.zeros_like(total)
        count = 0
        for f in features:
            f2 = np.asarray(f, dtype=np.float64).reshape(-1, f.shape[-1])
            total += f2.sum(axis=0)
            total_sq += (f2 * f2).sum(axis=0)
            count += f2.shape[0]
        mean = total / count
        var = np.maximum(total_sq / count - mean * mean, 0.0)
        std = np.sqrt(var)
        std[std < eps] = 1.0
        return mean.astype(np.float32), std.astype(np.float32)

    def _keys(self, data: EmotionData) -> np.ndarray:
        if self.mode == "per_corpus":
            return self._language_keys(data)
        if self.mode == "per_speaker":
            keys = np.asarray([str(v) for v in data.speakers], dtype=object)
            if self.min_speaker_utterances > 1:  # small speakers fall back to their language
                names, counts = np.unique(keys.astype(str), return_counts=True)
                small = set(names[counts < self.min_speaker_utterances])
                languages = self._language_keys(data)
                keys = np.where([k in small for k in keys], languages, keys)
            return keys
        return np.full(len(data), "__all__", dtype=object)

    @staticmethod
    def _language_keys(data: EmotionData) -> np.ndarray:
        # Plain codes (callers key statistics by language); a speaker id equal to a language
        # code would take that language's stored statistics.
        return np.asarray([str(v) for v in data.languages], dtype=object)

    def fit(self, datasets: Sequence[EmotionData],
            weights: Sequence[np.ndarray | None] | None = None) -> FeatureNormaliser:
        """Fit statistics on the union of ``datasets`` (``None`` entries ignored).
        ``weights`` (per-speaker mode): per dataset, ``(n, classes)`` class weights of its
        utterances, or ``None``; see the class docstring (class-balanced statistics)."""
        pairs = [(d, w) for d, w in zip(datasets, weights or [None] * len(datasets),
                                        strict=True) if d is not None and len(d)]
        datasets = [d for d, _ in pairs]
        if not datasets:
            raise EmobridgeError("FeatureNormaliser.fit: no data")
        self.stats_ = {}
        self.speaker_stats_ = {}
        if self.mode == "per_speaker":
            for d, w in pairs:
                if w is not None:
                    self.speaker_stats_.update(self._balanced(d, np.asarray(w, float)))
        if self.mode == "none" or (self.mode == "per_speaker"
                                   and self.min_speaker_utterances == 1):
            return self
        groups: dict[str, list[np.ndarray]] = {}
        for d in datasets:
            # per speaker, only the language fallbacks are stored (speakers use their own data)
            keys = self._language_keys(d) if self.mode == "per_speaker" else self._keys(d)
            for key, f in zip(keys, d.features, strict=True):
                groups.setdefault(key, []).append(f)
        self.stats_ = {k: self._stats(v, self.eps) for k, v in groups.items()}
        return self

    def _balanced(self, data: EmotionData, weights: np.ndarray
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Class-balanced statistics of each speaker of ``data`` with enough utterances."""
        if weights.shape[0] != len(data):
            raise EmobridgeError(f"FeatureNormaliser: {weights.shape[0]} weight rows for "
                                 f"{len(data)} utterances")
        x = data.stacked().astype(np.float64)
        keys = self._keys(data)
        speakers = {str(v) for v in data.speakers}
        found = {}
        for key in np.unique(keys.astype(str)):
            rows = keys == key
            if key not in speakers:  # a small speaker, sent to its corpus's statistics
                continue
            xs, ws = x[rows], weights[rows]
            mass = ws.sum(axis=0)
            present = np.flatnonzero(mass >= 1.0)
            if len(present) < 2:
                continue
            means = (ws[:, present].T @ xs) / mass[present, None]
            variances = np.stack([(ws[:, c] @ (xs - m) ** 2) / mass[c]
                                  for c, m in zip(present, means, strict=True)])
            mean = means.mean(axis=0)
            std = np.sqrt((variances + (means - mean) ** 2).mean(axis=0))
            std[std < self.eps] = 1.0
            found[key] = (mean.astype(np.float32), std.astype(np.float32))
        return found

    def transform(self, data: EmotionData) -> EmotionData:
        """A copy of ``data`` with standardised float32 features."""
        if self.mode == "none" or not len(data):
            feats = [np.asarray(f, dtype=np.float32) for f in data.features]
        else:
            keys = self._keys(data)
            stats = {**self.stats_, **getattr(self, "speaker_stats_", {})}
            missing = sorted(set(keys) - set(stats))
            for key in missing:  # per-speaker always; unseen languages per corpus
                stats[key] = self._stats([f for k, f in zip(keys, data.features, strict=True)
                                          if k == key], self.eps)
            feats = [((np.asarray(f, dtype=np.float32) - stats[k][0]) / stats[k][1])
                     .astype(np.float32) for k, f in zip(keys, data.features, strict=True)]
        return EmotionData(feats, data.labels, data.speakers, data.languages, data.ids,
                           data.classes)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "eps": self.eps,
                "min_speaker_utterances": self.min_speaker_utterances,
                "stats": {k: [m.tolist(), s.tolist()] for k, (m, s) in self.stats_.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureNormaliser:
        norm = cls(d["mode"], d.get("eps", 1e-5), d.get("min_speaker_utterances", 1))
        norm.stats_ = {k: (np.asarray(m, np.float32), np.asarray(s, np.float32))
                       for k, (m, s) in d.get("stats", {}).items()}
        return norm
