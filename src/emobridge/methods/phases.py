"""What a torch method's ``fit`` hands around: the inputs (:class:`FitData`) and the training
runs it asks for (:class:`Phase`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emobridge.methods.data import EmotionData

if TYPE_CHECKING:
    from emobridge.training import TrainingTask

__all__ = ["FitData", "Phase"]


def _present(data: EmotionData | None) -> EmotionData | None:
    return data if data is not None and len(data) else None


@dataclass
class FitData:
    """The four inputs of ``fit``; an empty input is ``None``.

    ``target_unlabelled`` never carries labels (they are hidden before any hook sees it);
    ``target_labelled`` is fully labelled.
    """

    source: EmotionData
    target_unlabelled: EmotionData | None = None
    target_labelled: EmotionData | None = None
    validation: EmotionData | None = None

    def __post_init__(self) -> None:
        self.target_unlabelled = _present(self.target_unlabelled)
        self.target_labelled = _present(self.target_labelled)
        self.validation = _present(self.validation)

    @property
    def targets(self) -> list[EmotionData]:
        """The target-language training inputs present (unlabelled, then labelled)."""
        return [d for d in (self.target_unlabelled, self.target_labelled) if d is not None]

    @property
    def target(self) -> EmotionData | None:
        """Every target training row in one set (labelled rows keep their labels)."""
        parts = self.targets
        return EmotionData.concat(parts) if parts else None

    @property
    def training(self) -> list[EmotionData]:
        """Source and target training inputs (not the validation data)."""
        return [self.source, *self.targets]

    def map(self, fn: Callable[[EmotionData], EmotionData]) -> FitData:
        """``fn`` applied to every input present (e.g. the fitted standardisation)."""
        return FitData(*(None if d is None else fn(d) for d in (
            self.source, self.target_unlabelled, self.target_labelled, self.validation)))


@dataclass
class Phase:
    """One training run of a method's ``fit``.

    Attributes
    ----------
    name:
        ``"train"`` for a single-phase method. Records of any other phase carry
        ``"phase": name`` in ``history_`` (so a multi-phase method's curve tells them apart).
    streams:
        Named (standardised) training data, one batch of each per step
        (:meth:`emobridge.training.Trainer.fit`).
    task:
        The loss and its hooks (:class:`~emobridge.training.TrainingTask`); ``None``: the
        method itself (its ``training_step``, ``validate``...).
    validation:
        Data monitored for early stopping / best epoch (``None``: none).
    primary:
        The stream that defines an epoch (default: the first).
    config:
        :class:`~emobridge.training.TrainConfig` fields overriding the method's
        :meth:`~emobridge.methods.neural.NeuralMethod.train_config` for this phase.
    result_attr:
        Attribute receiving this phase's :class:`~emobridge.training.TrainResult`.
    """

    name: str
    streams: Mapping[str, EmotionData]
    task: TrainingTask | None = None
    validation: EmotionData | None = None
    primary: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    result_attr: str = "train_result_"
