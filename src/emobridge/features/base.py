"""The extractor contract.

An extractor turns a mono float32 waveform into either a frames x dims matrix
(``output == "frames"``) or one vector (``output == "vector"``). Its :attr:`Extractor.id`
is a stable string built from its name, every parameter that changes the output and its
:attr:`Extractor.version`, so the feature store can key cached arrays by (audio hash,
extractor id).

Cache invalidation: when a change to an extractor's code changes its output (a bug fix, a new
default inside the computation), bump the class's ``version``; its id changes, so features
cached by the old code are no longer reused (``emobridge features prune --extractor OLD_ID``
deletes them). Version 1 keeps the ids of releases before versions existed.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np


class Extractor(ABC):
    """Base class of feature extractors.

    Subclasses set :attr:`name`, take every parameter in ``__init__`` (keyword, JSON-
    serialisable, stored as attributes of the same name) and implement :meth:`params`
    and :meth:`extract`.
    """

    #: Registry name, e.g. ``"logmel"``.
    name: ClassVar[str]
    #: Rate (Hz) the extractor expects; the store resamples audio to it.
    sample_rate_hz: int = 16_000
    #: Version of the extractor's code; bump it when a change alters the output (part of
    #: :attr:`id`, so stale cached features are not reused).
    version: ClassVar[int] = 1

    @property
    @abstractmethod
    def output(self) -> Literal["frames", "vector"]:
        """``"frames"`` for frames x dims arrays, ``"vector"`` for one vector per utterance."""

    @property
    def dim(self) -> int | None:
        """Width of the output (the vector's length, or dims per frame) when it is known
        without loading a model or reading audio, else ``None`` (the default). Config
        validation uses it to refuse features a method cannot use before any extraction."""
        return None

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Every parameter that affects the output (JSON-serialisable)."""

    @abstractmethod
    def extract(self, wave: np.ndarray, sample_rate_hz: int) -> np.ndarray:
        """Features of one waveform: ``(frames, dims)`` or ``(dims,)``, float32."""

    def extract_batch(self, waves: Sequence[np.ndarray], sample_rate_hz: int) -> list[np.ndarray]:
        """Features of several waveforms; encoders override this to batch on the device."""
        return [self.extract(w, sample_rate_hz) for w in waves]

    def spec(self) -> dict[str, Any]:
        """``{"name": ..., "params": ...}``: enough to rebuild the extractor (bundles, configs)."""
        return {"name": self.name, "params": self.params()}

    def id_params(self) -> dict[str, Any]:
        """What :attr:`id` digests: :meth:`params`, unless an extractor keys a file by its
        content rather than its path (``whisper``'s ``delta``)."""
        return self.params()

    @property
    def id(self) -> str:
        """Stable identifier: name plus a digest of the parameters and :attr:`version`."""
        params = self.id_params()
        # Version 1 hashes the parameters alone: the ids from before versions stay valid.
        keyed = params if self.version == 1 else {"params": params, "version": self.version}
        blob = json.dumps(keyed, sort_keys=True, default=str).encode()
        return f"{self.name}-{hashlib.sha1(blob).hexdigest()[:12]}"

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"
