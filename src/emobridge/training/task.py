"""A method's side of the loop: :class:`TrainingTask` (the step and the hooks around
epochs), the :class:`EpochContext` hooks see, and validation metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from emobridge.errors import EmobridgeError
from emobridge.metrics import unweighted_average_recall, weighted_accuracy
from emobridge.training.batching import UNLABELLED, Batch
from emobridge.training.config import TrainConfig

if TYPE_CHECKING:
    from emobridge.methods.data import EmotionData
    from emobridge.training.loop import Trainer

__all__ = ["EpochContext", "FunctionTask", "TrainingTask", "classification_metrics",
           "set_trainable"]


def set_trainable(module: nn.Module, trainable: bool) -> None:
    """Freeze (``False``) or unfreeze every parameter of ``module``."""
    for p in module.parameters():
        p.requires_grad_(trainable)


@dataclass
class EpochContext:
    """What hooks and steps see of the running loop.

    Attributes
    ----------
    trainer, model, optimizer, config, device:
        The running objects.
    epoch:
        0-based index of the current epoch.
    epochs:
        Planned number of epochs (``config.epochs``).
    step_in_epoch, steps_per_epoch:
        Step counter inside this epoch and the epoch's length.
    global_step:
        Optimisation steps taken since the start of training (across resumption).
    streams:
        The live ``{name: EmotionData}`` dict. ``on_epoch_start`` may replace entries (the
        batches of this epoch are drawn after it returns).
    rng:
        This epoch's numpy generator (shuffles, crops; tasks may draw from it too).
    history:
        Per-epoch records so far.
    """

    trainer: Trainer
    model: nn.Module
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    device: torch.device
    epoch: int
    epochs: int
    streams: dict[str, EmotionData]
    rng: np.random.Generator
    history: list[dict[str, Any]]
    global_step: int = 0
    step_in_epoch: int = 0
    steps_per_epoch: int = 1

    @property
    def progress(self) -> float:
        """Training progress in [0, 1): ``(epoch + step_in_epoch / steps_per_epoch) / epochs``
        (the ``p`` of DANN's lambda schedule)."""
        return (self.epoch + self.step_in_epoch / max(self.steps_per_epoch, 1)) / self.epochs

    @property
    def epoch_fraction(self) -> float:
        """``epoch / (epochs - 1)``: 0 in the first epoch, 1 in the last (per-epoch schedules,
        e.g. NNPM's memory rate growing 0 -> 0.4)."""
        return self.epoch / (self.epochs - 1) if self.epochs > 1 else 1.0


class TrainingTask:
    """A method's side of the loop. Override :meth:`training_step`; the rest has defaults.

    The task object is not pickled; its per-run state goes into checkpoints through
    :meth:`training_state` / :meth:`load_training_state`.
    """

    def make_optimizer(self, model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
        """Adam over every parameter (frozen ones get no gradient, so Adam skips them);
        override for another optimizer (Deep-WCCN: Adagrad)."""
        return torch.optim.Adam(model.parameters(), lr=config.lr,
                                weight_decay=config.weight_decay)

    def configure_optimizer(
        self, model: nn.Module, config: TrainConfig
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        """:meth:`make_optimizer` and a StepLR (``lr_decay_gamma`` every
        ``lr_decay_every_epochs``, stepped once per epoch; none when either is neutral)."""
        optimizer = self.make_optimizer(model, config)
        scheduler = None
        if config.lr_decay_every_epochs > 0 and config.lr_decay_gamma != 1.0:
            scheduler = torch.optim.lr_scheduler.StepLR(
                optimizer, step_size=config.lr_decay_every_epochs, gamma=config.lr_decay_gamma)
        return optimizer, scheduler

    def on_fit_start(self, ctx: EpochContext) -> None:
        """Once before the first epoch of this process (also after resuming; ``ctx.epoch`` is
        the first epoch to run). After a resume it runs after :meth:`load_training_state`, so
        a task that replaced a stream in an earlier epoch (a rebuilt pseudo-labelled set)
        re-applies its saved replacement here (``ctx.streams`` holds the original streams)."""

    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Before the batches of epoch ``ctx.epoch`` are drawn."""

    def training_step(
        self, batches: dict[str, Batch], ctx: EpochContext
    ) -> dict[str, torch.Tensor]:
        """Losses for one step: ``{"loss": total, **parts}``. ``batches`` maps stream name to a
        :class:`Batch` already on ``ctx.device``; the model is in train mode."""
        raise NotImplementedError

    def on_epoch_end(self, ctx: EpochContext) -> Mapping[str, float] | None:
        """After the epoch's steps and validation; returned numbers join the epoch's record."""
        return None

    def predict_logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Class logits of a batch (eval mode, no grad): ``model(batch.x, batch.mask)``."""
        return model(batch.x, batch.mask)

    def validate(self, model: nn.Module, data: EmotionData, ctx: EpochContext) -> dict[str, float]:
        """Validation metrics: ``val_ua`` (monitored), ``val_wa``, ``val_loss``."""
        logits = ctx.trainer.predict_logits(model, data, task=self)
        return classification_metrics(logits, data.labels, prefix="val_")

    def training_state(self) -> dict[str, Any]:
        """Extra per-run state to checkpoint (memories, pseudo-labels...)."""
        return {}

    def load_training_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`training_state` returned (on resume, before
        :meth:`on_fit_start`; model, optimizer and RNG states are already restored)."""


class FunctionTask(TrainingTask):
    """Wrap a ``step(batches, ctx) -> losses`` function (plus optional hooks) as a task."""

    def __init__(
        self,
        step: Callable[[dict[str, Batch], EpochContext], dict[str, torch.Tensor]],
        on_epoch_start: Callable[[EpochContext], None] | None = None,
        on_epoch_end: Callable[[EpochContext], Mapping[str, float] | None] | None = None,
    ) -> None:
        self._step = step
        self._start = on_epoch_start
        self._end = on_epoch_end

    def training_step(
        self, batches: dict[str, Batch], ctx: EpochContext
    ) -> dict[str, torch.Tensor]:
        return self._step(batches, ctx)

    def on_epoch_start(self, ctx: EpochContext) -> None:
        if self._start is not None:
            self._start(ctx)

    def on_epoch_end(self, ctx: EpochContext) -> Mapping[str, float] | None:
        return self._end(ctx) if self._end is not None else None


def classification_metrics(logits: np.ndarray, labels: np.ndarray,
                           prefix: str = "") -> dict[str, float]:
    """UA, WA (accuracy) and mean cross-entropy over the labelled rows."""
    labels = np.asarray(labels)
    keep = labels != UNLABELLED
    if not keep.any():
        raise EmobridgeError("validation data has no labelled utterance")
    logits_t = torch.as_tensor(logits[keep], dtype=torch.float32)
    y = labels[keep]
    pred = logits_t.argmax(dim=1).numpy()
    loss = float(nn.functional.cross_entropy(logits_t, torch.as_tensor(y)).item())
    return {f"{prefix}ua": unweighted_average_recall(y, pred),
            f"{prefix}wa": weighted_accuracy(y, pred),
            f"{prefix}loss": loss}


