"""Source memory: what a bundle keeps of its training data so that it can adapt later.

Label-free adaptation refits the bundle's method on its labelled source data plus the
user's unlabelled recordings, so the bundle must carry the source data's feature vectors,
labels, speaker and corpus ids (no audio). Optionally it also carries each source
utterance's speaker embedding (e.g. GE2E): speaker estimation on a user's folder learns an
emotion-blind speaker projection from them (:mod:`emobridge.inference.speakers`).

On disk: ``memory.safetensors`` in the bundle folder (``features`` as float16 by default,
``labels`` int64, ``speaker_index`` / ``language_index`` int32 into the string tables kept
in ``bundle.json``, optional ``speaker_embeddings``), listed and checksummed with the
bundle's other files. Nothing is pickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emobridge.errors import EmobridgeError

__all__ = ["MEMORY_FILE", "SourceMemory"]

MEMORY_FILE = "memory.safetensors"
_DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass
class SourceMemory:
    """Labelled source vectors kept in a bundle.

    Attributes
    ----------
    features:
        ``(n, dims)`` pooled feature vectors (as the method was trained on them).
    labels:
        ``(n,)`` class indices into the bundle's classes.
    speakers, languages:
        ``(n,)`` string ids (languages stand for corpora: the normaliser keys by them).
    speaker_embeddings:
        ``(n, d)`` speaker-encoder vectors, or ``None``.
    speaker_features:
        The extractor spec of ``speaker_embeddings`` (``None`` without them).
    """

    features: np.ndarray
    labels: np.ndarray
    speakers: np.ndarray
    languages: np.ndarray
    speaker_embeddings: np.ndarray | None = None
    speaker_features: str | None = None

    def __post_init__(self) -> None:
        n = len(self.features)
        if self.features.ndim != 2 or n == 0:
            raise EmobridgeError(f"source memory: needs (n, dims) vectors, got shape "
                                 f"{self.features.shape}")
        for name in ("labels", "speakers", "languages"):
            if len(getattr(self, name)) != n:
                raise EmobridgeError(f"source memory: {name} has {len(getattr(self, name))} "
                                     f"entries for {n} vectors")
        if self.speaker_embeddings is not None and len(self.speaker_embeddings) != n:
            raise EmobridgeError(f"source memory: {len(self.speaker_embeddings)} speaker "
                                 f"embeddings for {n} vectors")

    @classmethod
    def from_data(cls, data: Any, speaker_embeddings: np.ndarray | None = None,
                  speaker_features: str | None = None) -> SourceMemory:
        """The memory of a labelled :class:`~emobridge.methods.EmotionData` of vectors."""
        if data.is_sequence:
            raise EmobridgeError("source memory holds one vector per utterance; these "
                                 "features are frame sequences (use pooled features)")
        if not data.is_labelled:
            raise EmobridgeError("source memory needs labelled source data")
        return cls(data.stacked(), np.asarray(data.labels, np.int64),
                   np.asarray([str(s) for s in data.speakers], dtype=object),
                   np.asarray([str(x) for x in data.languages], dtype=object),
                   None if speaker_embeddings is None
                   else np.asarray(speaker_embeddings, np.float32),
                   speaker_features if speaker_embeddings is not None else None)

    def __len__(self) -> int:
        return len(self.features)

    def to_data(self, classes: tuple[str, ...]) -> Any:
        """The memory as labelled :class:`~emobridge.methods.EmotionData` (float32)."""
        from emobridge.methods import EmotionData

        if int(self.labels.max()) >= len(classes) or int(self.labels.min()) < 0:
            raise EmobridgeError(f"source memory: labels outside the {len(classes)} classes")
        feats = list(np.asarray(self.features, dtype=np.float32))
        return EmotionData(feats, self.labels, self.speakers, self.languages,
                           np.asarray([f"memory:{i}" for i in range(len(self))], dtype=object),
                           tuple(classes))

    # -- files --------------------------------------------------------------------------
    def write(self, directory: Path, dtype: str = "float16") -> dict[str, Any]:
        """Write :data:`MEMORY_FILE` into ``directory``; returns the JSON description that
        goes into ``bundle.json`` (string tables, sizes, dtype)."""
        from emobridge.fileio import write_arrays

        if dtype not in _DTYPES:
            raise EmobridgeError(f"source memory dtype must be one of {sorted(_DTYPES)}, "
                                 f"got {dtype!r}")
        speakers, speaker_index = np.unique(self.speakers.astype(str), return_inverse=True)
        languages, language_index = np.unique(self.languages.astype(str), return_inverse=True)
        arrays = {"features": self.features.astype(_DTYPES[dtype]),
                  "labels": self.labels.astype(np.int64),
                  "speaker_index": speaker_index.astype(np.int32),
                  "language_index": language_index.astype(np.int32)}
        if self.speaker_embeddings is not None:
            arrays["speaker_embeddings"] = self.speaker_embeddings.astype(_DTYPES[dtype])
        write_arrays(directory / MEMORY_FILE, arrays)
        return {"file": MEMORY_FILE, "utterances": len(self), "dims": int(self.features.shape[1]),
                "dtype": dtype, "speakers": speakers.tolist(), "languages": languages.tolist(),
                "speaker_features": self.speaker_features,
                "bytes": (directory / MEMORY_FILE).stat().st_size}

    @classmethod
    def read(cls, directory: Path, meta: dict[str, Any]) -> SourceMemory:
        """Read what :meth:`write` wrote (the file's checksum is checked by the bundle
        loader first); any inconsistency raises :class:`EmobridgeError`."""
        from emobridge.fileio import read_arrays

        path = directory / MEMORY_FILE
        try:
            arrays = read_arrays(path)
            speakers = np.asarray([str(s) for s in meta["speakers"]], dtype=object)
            languages = np.asarray([str(x) for x in meta["languages"]], dtype=object)
            feats, labels = arrays["features"], arrays["labels"]
            s_index, l_index = arrays["speaker_index"], arrays["language_index"]
            if len(speakers) == 0 or len(languages) == 0 or s_index.max() >= len(speakers) \
                    or l_index.max() >= len(languages) or min(s_index.min(), l_index.min()) < 0:
                raise ValueError("speaker or language index out of range")
            if not np.isfinite(feats).all():
                raise ValueError("non-finite feature values")
            embeddings = arrays.get("speaker_embeddings")
            return cls(np.asarray(feats, np.float32), np.asarray(labels, np.int64),
                       speakers[s_index], languages[l_index],
                       None if embeddings is None else np.asarray(embeddings, np.float32),
                       meta.get("speaker_features") if embeddings is not None else None)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise EmobridgeError(f"{path}: damaged source memory ({exc})") from None
