"""The training engine shared by every torch method: batches, the loop, early stopping,
checkpoints, per-epoch curves and resumption.

One module per job: :mod:`~emobridge.training.config` (:class:`TrainConfig`),
:mod:`~emobridge.training.batching` (:class:`Batch`, padding, crops, stream iterators),
:mod:`~emobridge.training.task` (:class:`TrainingTask`, :class:`EpochContext`),
:mod:`~emobridge.training.loop` (:class:`Trainer`), :mod:`~emobridge.training.checkpoints`
(``last.pt`` / ``best.pt``, safe loading), :mod:`~emobridge.training.history` (CSV,
TensorBoard, progress bar).

The loop knows nothing about a method's loss. A method plugs in through a
:class:`TrainingTask` (or a bare ``step`` function): for each step the :class:`Trainer` draws
one mini-batch from every named *stream* (``{"source": ..., "target": ...}``), hands them to
:meth:`TrainingTask.training_step`, which returns a dict of losses; the trainer back-propagates
``losses["loss"]`` and logs the mean of every entry per epoch. Hooks run around each epoch
(:meth:`TrainingTask.on_epoch_start` may replace a stream, e.g. a pseudo-labelled training set
rebuilt every few epochs, or freeze layers; :meth:`TrainingTask.on_epoch_end` may return extra
metrics).

Epochs and streams
    One epoch is one pass over the *primary* stream (the first one, or ``primary=``), in
    ``ceil(n / batch_size)`` steps. The other streams are cycled: reshuffled whenever they run
    out, so every step sees a batch from each.

Determinism
    :func:`emobridge.runtime.seed_everything` seeds ``random``, numpy and torch; shuffling
    and cropping in epoch ``e`` use ``numpy.random.default_rng([seed, e])`` (also
    :attr:`EpochContext.rng`, for tasks that draw numbers, e.g. mixup), so they do not
    depend on what ran before; torch's RNG (dropout) is saved in every checkpoint. A resumed
    run therefore ends with the same weights as an uninterrupted one.

Checkpoints (``TrainConfig.checkpoint_dir``)
    ``last.pt`` after every epoch: model, optimizer, scheduler, RNG states, epoch, best score
    and weights, early-stopping counter, history and the task's own state
    (:meth:`TrainingTask.training_state`). ``best.pt``: the weights of the best validation
    epoch. Both are written atomically and hold only tensors and plain values (RNG states
    included), so they are read with ``torch.load(weights_only=True)``: a planted file
    cannot run code.

Validation and early stopping
    With validation data, after each epoch :meth:`TrainingTask.validate` computes ``val_ua``
    (unweighted average recall, the monitored score), ``val_wa`` and ``val_loss``. Training
    stops after ``patience`` epochs without a better ``val_ua`` and the best weights are
    restored (``restore_best``). Without validation data the last epoch's weights are kept.
"""

from emobridge.training.batching import UNLABELLED, Batch, collate, cycle_batches, iterate_batches
from emobridge.training.checkpoints import load_checkpoint, rng_state, set_rng_state
from emobridge.training.config import TrainConfig
from emobridge.training.history import write_history_csv
from emobridge.training.loop import Trainer, TrainResult
from emobridge.training.task import (
    EpochContext,
    FunctionTask,
    TrainingTask,
    classification_metrics,
    set_trainable,
)

__all__ = [
    "UNLABELLED",
    "Batch",
    "EpochContext",
    "FunctionTask",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingTask",
    "classification_metrics",
    "collate",
    "cycle_batches",
    "iterate_batches",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "set_trainable",
    "write_history_csv",
]
