"""``supervised``: train on the source plus all labelled target training data (the upper
bound of unsupervised adaptation)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emobridge.errors import EmobridgeError
from emobridge.methods.base import register_method
from emobridge.methods.data import EmotionData
from emobridge.methods.neural import DomainLoss, NeuralMethod, Normalise
from emobridge.methods.phases import FitData


@register_method
class Supervised(NeuralMethod):
    """Supervised training on ``source`` and ``target_labelled`` pooled into one stream.

    Parameters
    ----------
    use_source:
        ``False`` trains on the labelled target data alone (in-language training).
    backbone, ..., resume:
        Every :class:`~emobridge.methods.neural.NeuralMethod` parameter.
    """

    needs_target_labels = True

    name = "supervised"

    def __init__(
        self,
        *,
        use_source: bool = True,
        # every NeuralMethod parameter (method-specific defaults where they differ)
        backbone: str = "auto",
        backbone_params: Mapping[str, Any] | None = None,
        normalise: Normalise = "per_corpus",
        class_weight: str | None = None,
        domain_loss: DomainLoss = "none",
        domain_loss_weight: float = 1.0,
        domain_loss_layer: str = "embedding",
        domain_loss_params: Mapping[str, Any] | None = None,
        epochs: int = 50,
        batch_size: int = 32,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_decay_gamma: float = 1.0,
        lr_decay_every_epochs: int = 0,
        patience: int | None = None,
        crop_frames: int | None = None,
        max_grad_norm: float | None = None,
        device: str = "auto",
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
        log_csv: str | Path | None = None,
        progress: bool = False,
        resume: bool = False,
    ) -> None:
        self._store_params(locals())

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
