"""``ge2e``: one 256-d GE2E speaker embedding per utterance (Resemblyzer's pretrained weights).

See :mod:`emobridge.models.speaker_encoder` for the network, the weights file and the
preprocessing (volume raised to -30 dBFS, leading / trailing silence cut instead of
webrtcvad). Used to estimate speakers in an unlabelled folder
(:mod:`emobridge.inference.speakers`); the feature store caches the vectors like any feature.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from emobridge.errors import FeatureError
from emobridge.features.base import Extractor
from emobridge.features.extractors._common import as_mono_float32, resolve_device
from emobridge.features.registry import register_extractor


@register_extractor
class GE2E(Extractor):
    """GE2E speaker embedding ``(256,)``, L2-normalised.

    Parameters
    ----------
    rate:
        Partial utterances (1.6 s each) per second (resemblyzer's default 1.3).
    min_coverage:
        The last partial is kept when at least this share of it is audio (default 0.75).
    batch_size:
        Partials per LSTM call (not part of :attr:`id`: it does not change the output).
    device:
        ``"cpu"``, ``"cuda"``, ``"auto"``... (not part of :attr:`id`).
    weights:
        Weights file; ``None``: ``$EMOBRIDGE_GE2E_WEIGHTS`` or resemblyzer's ``pretrained.pt``.
        The file's name enters :attr:`id` only when given, so the default weights keep one id.
    """

    name = "ge2e"

    def __init__(self, *, rate: float = 1.3, min_coverage: float = 0.75, batch_size: int = 256,
                 device: str = "cpu", weights: str | None = None) -> None:
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.625 <= rate <= 100:
            raise FeatureError(f"ge2e: rate must be a number in [0.625, 100] partials per "
                               f"second, got {rate!r}")
        if isinstance(min_coverage, bool) or not isinstance(min_coverage, int | float) \
                or not 0 < min_coverage <= 1:
            raise FeatureError(f"ge2e: min_coverage must be in (0, 1], got {min_coverage!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise FeatureError(f"ge2e: batch_size must be a positive int, got {batch_size!r}")
        self.rate = float(rate)
        self.min_coverage = float(min_coverage)
        self.batch_size = batch_size
        self.device = resolve_device("ge2e", device)
        self.weights = weights
        self._model: Any = None

    @property
    def output(self) -> Literal["frames", "vector"]:
        return "vector"

    @property
    def dim(self) -> int | None:
        """Always 256 (the GE2E embedding)."""
        return 256

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"rate": self.rate, "min_coverage": self.min_coverage}
        if self.weights is not None:
            params["weights"] = self.weights
        return params

    def load(self) -> Any:
        """Load (once) and return the :class:`~emobridge.models.speaker_encoder.SpeakerEncoder`."""
        if self._model is None:
            from emobridge.models.speaker_encoder import SpeakerEncoder

            self._model = SpeakerEncoder.from_pretrained(self.weights, device=self.device)
        return self._model

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None}  # worker processes reload the weights

    def extract(self, wave: np.ndarray, sample_rate_hz: int) -> np.ndarray:
        return self.extract_batch([wave], sample_rate_hz)[0]

    def extract_batch(self, waves: Sequence[np.ndarray], sample_rate_hz: int
                      ) -> list[np.ndarray]:
        if not len(waves):
            return []
        model = self.load()
        ready = [as_mono_float32(w, sample_rate_hz, self.sample_rate_hz, "ge2e") for w in waves]
        embeds = model.embed_utterances(ready, rate=self.rate, min_coverage=self.min_coverage,
                                        batch_size=self.batch_size)
        return list(embeds)
