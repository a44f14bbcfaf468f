"""``supervised``: train on the source plus all labelled target training data (the upper
bound of unsupervised adaptation)."""

from __future__ import annotations

from emobridge.errors import EmobridgeError
from emobridge.methods.base import register_method
from emobridge.methods.data import EmotionData
from emobridge.methods.neural import NeuralMethod
from emobridge.methods.phases import FitData


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

    def select_data(self, data: FitData) -> FitData:
        if data.target_labelled is None:
            raise EmobridgeError(
                "supervised: needs target_labelled (the labelled target training data); "
                "it is the upper bound that trains on target labels")
        return data

    def normalisation_sets(self, data: FitData) -> list[EmotionData]:
        return data.training if self.use_source else data.targets

    def training_streams(self, data: FitData) -> dict[str, EmotionData]:
        assert data.target_labelled is not None
        if not self.use_source:
            return {"train": data.target_labelled}
        return {"train": EmotionData.concat([data.source, data.target_labelled])}
