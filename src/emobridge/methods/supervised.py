"""``supervised``: train on the source plus all labelled target training data (the upper
bound of unsupervised adaptation)."""

from __future__ import annotations

from emobridge.errors import EmobridgeError
from emobridge.methods.base import register_method
from emobridge.methods.data import EmotionData
from emobridge.methods.neural import NeuralMethod


@register_method
class Supervised(NeuralMethod):
    """Supervised training on ``source`` and ``target_labelled`` pooled into one stream.

    Parameters
    ----------
    use_source:
        ``False`` trains on the labelled target data alone (in-language training).
    **kwargs:
        Every :class:`NeuralMethod` parameter.
    """

    name = "supervised"

    def __init__(self, use_source: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.use_source = use_source

    def fit(self, source: EmotionData, target_unlabelled: EmotionData | None = None,
            target_labelled: EmotionData | None = None,
            validation: EmotionData | None = None) -> Supervised:
        if target_labelled is None or not len(target_labelled):
            raise EmobridgeError(
                "supervised: needs target_labelled (the labelled target training data); "
                "it is the upper bound that trains on target labels")
        super().fit(source, target_unlabelled, target_labelled, validation)
        return self

    def _normalisation_sets(self, source: EmotionData, target_unlabelled: EmotionData | None,
                            target_labelled: EmotionData | None) -> list[EmotionData]:
        sets = [source] if self.use_source else []
        return sets + [d for d in (target_unlabelled, target_labelled) if d is not None]

    def _training_streams(self, source: EmotionData, target_unlabelled: EmotionData | None,
                          target_labelled: EmotionData | None) -> dict[str, EmotionData]:
        assert target_labelled is not None
        if not self.use_source:
            return {"train": target_labelled}
        return {"train": EmotionData.concat([source, target_labelled])}
