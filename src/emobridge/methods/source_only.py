"""``source_only``: train on the labelled source language, test on the target (the lower bound;
NNPM's SNSA-F)."""

from __future__ import annotations

from emobridge.methods.base import register_method
from emobridge.methods.data import EmotionData
from emobridge.methods.neural import NeuralMethod
from emobridge.methods.phases import FitData


@register_method
class SourceOnly(NeuralMethod):
    """Supervised training on the source alone; target data passed to ``fit`` is ignored,
    including for the standardisation statistics (fitted on the source only, except that
    ``normalise="per_corpus"`` / ``"per_speaker"`` standardise unseen target data with its own
    statistics at prediction time). Takes every :class:`NeuralMethod` parameter."""

    name = "source_only"

    def normalisation_sets(self, data: FitData) -> list[EmotionData]:
        return [data.source]
