"""openSMILE feature sets (eGeMAPS v02, ComParE 2016, emobase...) through the ``opensmile``
package (``opensmile.Smile(feature_set=..., feature_level=...).process_signal``).

Functionals give one vector per utterance (eGeMAPSv02: 88, emobase: 988, ComParE_2016:
6373 values), the usual input of the random-forest / SVM baselines; low-level descriptors
give ``(frames, dims)`` at openSMILE's 10 ms frame rate.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from emobridge.errors import FeatureError
from emobridge.features.base import Extractor
from emobridge.features.extractors._common import (
    as_mono_float32,
    check_choice,
    defer_interrupts,
)
from emobridge.features.registry import register_extractor

#: ``feature_level`` values and the ``opensmile.FeatureLevel`` member each names.
FEATURE_LEVELS = {
    "functionals": "Functionals",
    "lld": "LowLevelDescriptors",
    "lld_deltas": "LowLevelDescriptors_Deltas",
}


def _feature_sets() -> dict[str, str]:
    """openSMILE feature-set names (lower case -> canonical), from the installed package."""
    try:
        import opensmile
    except ImportError:  # pragma: no cover - the extra is installed in CI
        raise FeatureError("opensmile extractor needs the 'opensmile' package "
                           "(pip install 'emobridge[opensmile]')") from None
    return {name.lower(): name for name in opensmile.FeatureSet.__members__}


@register_extractor
class OpenSmile(Extractor):
    """openSMILE features of one utterance.

    Parameters
    ----------
    feature_set:
        An ``opensmile.FeatureSet`` name (case-insensitive): ``eGeMAPSv02`` (default),
        ``ComParE_2016``, ``emobase``, ``GeMAPSv01b``...
    feature_level:
        ``"functionals"`` (a ``(dims,)`` vector), ``"lld"`` or ``"lld_deltas"``
        (``(frames, dims)``).
    sample_rate_hz:
        Rate the audio is resampled to before openSMILE sees it (16 kHz, the corpora's rate).
    """

    name = "opensmile"

    def __init__(self, feature_set: str = "eGeMAPSv02", feature_level: str = "functionals",
                 sample_rate_hz: int = 16_000) -> None:
        sets = _feature_sets()
        if not isinstance(feature_set, str) or feature_set.lower() not in sets:
            raise FeatureError(f"opensmile: unknown feature_set {feature_set!r}; known: "
                               f"{', '.join(sets.values())}")
        check_choice("opensmile", "feature_level", feature_level, tuple(FEATURE_LEVELS))
        if isinstance(sample_rate_hz, bool) or not isinstance(sample_rate_hz, int) \
                or sample_rate_hz <= 0:
            raise FeatureError(f"opensmile: sample_rate_hz must be a positive integer, "
                               f"got {sample_rate_hz!r}")
        self.feature_set = sets[feature_set.lower()]
        self.feature_level = feature_level
        self.sample_rate_hz = sample_rate_hz
        self._smile: Any = None

    @property
    def output(self) -> Literal["frames", "vector"]:
        return "vector" if self.feature_level == "functionals" else "frames"

    def params(self) -> dict[str, Any]:
        return {"feature_set": self.feature_set, "feature_level": self.feature_level,
                "sample_rate_hz": self.sample_rate_hz}

    @property
    def smile(self) -> Any:
        """The ``opensmile.Smile`` instance (created on first use)."""
        if self._smile is None:
            import opensmile

            self._smile = opensmile.Smile(
                feature_set=opensmile.FeatureSet[self.feature_set],
                feature_level=opensmile.FeatureLevel[FEATURE_LEVELS[self.feature_level]],
            )
        return self._smile

    @property
    def feature_names(self) -> list[str]:
        """Names of the output dimensions, in order."""
        return list(self.smile.feature_names)

    def extract(self, wave: np.ndarray, sample_rate_hz: int) -> np.ndarray:
        wave = as_mono_float32(wave, sample_rate_hz, self.sample_rate_hz, "opensmile")
        smile = self.smile
        with defer_interrupts():  # Ctrl-C inside openSMILE's callbacks would leave NaN
            table = smile.process_signal(wave, self.sample_rate_hz).to_numpy(dtype=np.float32)
        if self.feature_level == "functionals":
            if table.shape[0] != 1:
                raise FeatureError(f"opensmile: expected one functionals row, got {table.shape}")
            return np.ascontiguousarray(table[0])
        return np.ascontiguousarray(table)

    def __getstate__(self) -> dict[str, Any]:
        # The Smile object wraps a C handle: rebuild it in the receiving process.
        return {**self.__dict__, "_smile": None}
