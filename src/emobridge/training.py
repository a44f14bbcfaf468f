"""The training engine shared by every torch method: batches, the loop, early stopping,
checkpoints, per-epoch curves and resumption.

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

from __future__ import annotations

import csv
import math
import pickle
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from emobridge.errors import ConfigError, EmobridgeError
from emobridge.fileio import atomic_open, atomic_path
from emobridge.metrics import unweighted_average_recall, weighted_accuracy
from emobridge.runtime import seed_everything, torch_device

if TYPE_CHECKING:
    from emobridge.methods.data import EmotionData

#: Label of an unlabelled utterance; equals :data:`emobridge.methods.data.UNLABELLED`. Not
#: imported from there: importing :mod:`emobridge.methods` registers the methods, which import
#: this module.
UNLABELLED = -1

__all__ = [
    "Batch",
    "EpochContext",
    "FunctionTask",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingTask",
    "collate",
    "iterate_batches",
    "set_trainable",
]

CHECKPOINT_FORMAT = 1


# ----------------------------------------------------------------------------- utilities

def set_trainable(module: nn.Module, trainable: bool) -> None:
    """Freeze (``False``) or unfreeze every parameter of ``module``."""
    for p in module.parameters():
        p.requires_grad_(trainable)


# ----------------------------------------------------------------------------- batches

@dataclass
class Batch:
    """One mini-batch.

    Attributes
    ----------
    x:
        ``(batch, frames, dims)`` padded frames, or ``(batch, dims)`` vectors; float32.
    mask:
        ``(batch, frames)`` bool, ``True`` on real frames; ``None`` for vectors.
    y:
        ``(batch,)`` int64 labels, :data:`~emobridge.methods.data.UNLABELLED` (-1) where unknown.
    index:
        ``(batch,)`` int64 positions of the rows in the stream's :class:`EmotionData` (for
        per-utterance state: memories, pseudo-labels).
    """

    x: torch.Tensor
    mask: torch.Tensor | None
    y: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def lengths(self) -> torch.Tensor | None:
        """Real frames per row (``None`` for vectors)."""
        return None if self.mask is None else self.mask.sum(dim=1)

    @property
    def labelled(self) -> torch.Tensor:
        """Bool ``(batch,)``: rows with a label."""
        return self.y != UNLABELLED

    def to(self, device: torch.device | str) -> Batch:
        """A copy on ``device``."""
        return Batch(
            self.x.to(device, non_blocking=True),
            None if self.mask is None else self.mask.to(device, non_blocking=True),
            self.y.to(device, non_blocking=True),
            self.index.to(device, non_blocking=True),
        )


def collate(
    features: Sequence[np.ndarray],
    labels: Sequence[int] | np.ndarray,
    index: Sequence[int] | np.ndarray,
    crop_frames: int | None = None,
    rng: np.random.Generator | None = None,
) -> Batch:
    """Stack utterances into a :class:`Batch`.

    Frame matrices are padded with zeros to the longest in the batch (after cropping) and get
    a mask. ``crop_frames`` (training only) cuts utterances longer than that to a random window
    of ``crop_frames`` frames, the offset drawn from ``rng`` (required then); shorter ones are
    kept whole.
    """
    if not len(features):
        raise EmobridgeError("collate: empty batch")
    labels_t = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    index_t = torch.as_tensor(np.asarray(index, dtype=np.int64))
    if features[0].ndim == 1:
        x = torch.from_numpy(np.stack(features).astype(np.float32, copy=False))
        return Batch(x, None, labels_t, index_t)
    if crop_frames is not None and crop_frames > 0:
        if rng is None:
            raise EmobridgeError("collate: crop_frames needs an rng")
        cropped = []
        for f in features:
            if f.shape[0] > crop_frames:
                start = int(rng.integers(0, f.shape[0] - crop_frames + 1))
                f = f[start:start + crop_frames]
            cropped.append(f)
        features = cropped
    lengths = np.array([f.shape[0] for f in features])
    if lengths.min() < 1:
        raise EmobridgeError("collate: an utterance has zero frames")
    dims = features[0].shape[1]
    x = np.zeros((len(features), int(lengths.max()), dims), dtype=np.float32)
    for i, f in enumerate(features):
        x[i, : f.shape[0]] = f
    mask = torch.arange(x.shape[1]).unsqueeze(0) < torch.as_tensor(lengths).unsqueeze(1)
    return Batch(torch.from_numpy(x), mask, labels_t, index_t)


def iterate_batches(
    data: EmotionData,
    batch_size: int,
    shuffle: bool = False,
    rng: np.random.Generator | None = None,
    crop_frames: int | None = None,
    drop_last: bool = False,
    sort_by_length: bool = False,
) -> Iterator[Batch]:
    """Yield :class:`Batch` es over ``data`` once.

    ``shuffle`` permutes with ``rng``; ``sort_by_length`` (inference) groups utterances of
    similar length to waste less padding; ``Batch.index`` always gives the original rows.
    """
    n = len(data)
    if shuffle:
        if rng is None:
            raise EmobridgeError("iterate_batches: shuffle needs an rng")
        order = rng.permutation(n)
    elif sort_by_length and data.is_sequence:
        order = np.argsort([f.shape[0] for f in data.features], kind="stable")
    else:
        order = np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if drop_last and len(idx) < batch_size and start > 0:
            break
        yield collate([data.features[i] for i in idx], data.labels[idx], idx,
                      crop_frames=crop_frames, rng=rng)


def _cycle(data: EmotionData, batch_size: int, rng: np.random.Generator,
           crop_frames: int | None) -> Iterator[Batch]:
    """Endless batches of exactly ``batch_size`` rows (fewer only if the stream is smaller),
    reshuffling at every pass."""
    n = len(data)
    size = min(batch_size, n)
    order = rng.permutation(n)
    pos = 0
    while True:
        if pos + size > n:
            order = np.concatenate([order[pos:], rng.permutation(n)])
            pos = 0
        idx = order[pos:pos + size]
        pos += size
        yield collate([data.features[i] for i in idx], data.labels[idx], idx,
                      crop_frames=crop_frames, rng=rng)


# ----------------------------------------------------------------------------- config

@dataclass
class TrainConfig:
    """Everything the loop needs that is not the model or the loss.

    Attributes
    ----------
    epochs:
        Maximum number of epochs.
    batch_size:
        Rows per stream per step (``Trainer.fit(batch_sizes=...)`` overrides per stream).
    lr, weight_decay:
        Adam's learning rate and L2 weight decay.
    lr_decay_gamma, lr_decay_every_epochs:
        StepLR: multiply the learning rate by ``gamma`` every ``every`` epochs (0 = never).
    patience:
        Stop after this many epochs without a better validation UA (``None`` or 0: never).
    restore_best:
        After training with validation data, load the best epoch's weights.
    device:
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    seed:
        Seeds everything (see the module docstring).
    deterministic:
        Ask for deterministic kernels where cheap (see
        :func:`emobridge.runtime.seed_everything`).
    crop_frames:
        Random crop of training utterances to this many frames (``None``: whole). Validation
        and prediction always see whole utterances.
    drop_last:
        Drop the primary stream's last incomplete batch.
    max_grad_norm:
        Clip the gradient norm (``None``: no clipping).
    eval_batch_size:
        Batch size for validation / prediction (``None``: ``batch_size``).
    checkpoint_dir:
        Where ``last.pt`` / ``best.pt`` go (``None``: no checkpoints, no resumption).
    log_csv:
        Per-epoch metrics CSV, rewritten atomically after every epoch.
    tensorboard_dir:
        TensorBoard event folder; needs the ``tensorboard`` package (warns and skips if absent).
    progress:
        Show a tqdm progress bar over epochs.
    resume:
        Continue from ``checkpoint_dir/last.pt`` when it exists (else start afresh).
    """

    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    lr_decay_gamma: float = 1.0
    lr_decay_every_epochs: int = 0
    patience: int | None = None
    restore_best: bool = True
    device: str = "auto"
    seed: int = 0
    deterministic: bool = True
    crop_frames: int | None = None
    drop_last: bool = False
    max_grad_norm: float | None = None
    eval_batch_size: int | None = None
    checkpoint_dir: str | Path | None = None
    log_csv: str | Path | None = None
    tensorboard_dir: str | Path | None = None
    progress: bool = False
    resume: bool = False

    #: Fields that may differ between an interrupted run and its resumption.
    _RESUME_FREE = ("epochs", "patience", "device", "checkpoint_dir", "log_csv",
                    "tensorboard_dir", "progress", "resume", "eval_batch_size", "restore_best")

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.lr_decay_every_epochs < 0:
            raise ConfigError(f"lr_decay_every_epochs must be >= 0, got "
                              f"{self.lr_decay_every_epochs}")
        if self.patience is not None and self.patience < 0:
            raise ConfigError(f"patience must be >= 0 or None, got {self.patience}")
        if self.crop_frames is not None and self.crop_frames < 1:
            raise ConfigError(f"crop_frames must be >= 1 or None, got {self.crop_frames}")
        if self.resume and self.checkpoint_dir is None:
            raise ConfigError("resume=True needs a checkpoint_dir")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys raise :class:`ConfigError`."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"TrainConfig: unknown keys {sorted(unknown)}")
        return cls(**dict(values))

    def _fingerprint(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in self._RESUME_FREE}


# ----------------------------------------------------------------------------- tasks

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

    def configure_optimizer(
        self, model: nn.Module, config: TrainConfig
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        """Adam over every parameter (frozen ones get no gradient, so Adam skips them) and a
        StepLR (``lr_decay_gamma`` every ``lr_decay_every_epochs``, stepped once per epoch)."""
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr,
                                     weight_decay=config.weight_decay)
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


@dataclass
class TrainResult:
    """Outcome of :meth:`Trainer.fit`.

    ``history`` holds one dict per epoch (``epoch`` 1-based, ``lr``, the mean of every loss
    the task returned, validation metrics, task extras, ``time_s``).
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None
    stopped_early: bool = False
    epochs_run: int = 0
    resumed_from_epoch: int | None = None


# ----------------------------------------------------------------------------- trainer

class Trainer:
    """Runs a :class:`TrainingTask` on a model. See the module docstring."""

    monitor = "val_ua"

    def __init__(self, config: TrainConfig | None = None, **overrides: Any) -> None:
        config = config or TrainConfig()
        if overrides:
            config = TrainConfig.from_dict({**asdict(config), **overrides})
        self.config = config
        self.device = torch_device(config.device)

    # -- inference ---------------------------------------------------------------------
    @torch.no_grad()
    def predict_logits(self, model: nn.Module, data: EmotionData,
                       task: TrainingTask | None = None,
                       batch_size: int | None = None) -> np.ndarray:
        """Logits ``(len(data), classes)`` in row order; eval mode, whole utterances."""
        task = task or TrainingTask()
        return self._map_batches(model, data, task.predict_logits, batch_size)

    @torch.no_grad()
    def map_batches(self, model: nn.Module, data: EmotionData,
                    fn: Callable[[nn.Module, Batch], torch.Tensor],
                    batch_size: int | None = None) -> np.ndarray:
        """Apply ``fn(model, batch) -> (batch, ...)`` over ``data`` in eval mode, no grad;
        results in row order (e.g. embeddings)."""
        return self._map_batches(model, data, fn, batch_size)

    def _map_batches(self, model, data, fn, batch_size) -> np.ndarray:
        if not len(data):
            raise EmobridgeError("nothing to predict: empty data")
        was_training = model.training
        model.eval()
        model.to(self.device)
        size = batch_size or self.config.eval_batch_size or self.config.batch_size
        out: np.ndarray | None = None
        try:
            with torch.no_grad():
                for batch in iterate_batches(data, size, sort_by_length=True):
                    result = fn(model, batch.to(self.device)).detach().float().cpu().numpy()
                    if out is None:
                        out = np.zeros((len(data),) + result.shape[1:], dtype=np.float32)
                    out[batch.index.numpy()] = result
        finally:
            model.train(was_training)
        assert out is not None
        return out

    # -- training ----------------------------------------------------------------------
    def fit(
        self,
        model: nn.Module,
        task: TrainingTask | Callable[[dict[str, Batch], EpochContext], dict[str, torch.Tensor]],
        streams: Mapping[str, EmotionData],
        validation: EmotionData | None = None,
        primary: str | None = None,
        batch_sizes: Mapping[str, int] | None = None,
    ) -> TrainResult:
        """Train ``model`` in place.

        Parameters
        ----------
        model:
            The module to optimise (everything in it is checkpointed).
        task:
            A :class:`TrainingTask` or a ``step(batches, ctx) -> losses`` function.
        streams:
            Named training data, e.g. ``{"source": src, "target": tgt}``; each step gets one
            batch of each. Labels may be UNLABELLED where unknown.
        validation:
            Labelled data for ``val_ua``, early stopping and best-checkpoint selection.
        primary:
            The stream defining an epoch (default: the first).
        batch_sizes:
            Per-stream batch sizes (default ``config.batch_size``).
        """
        cfg = self.config
        if not isinstance(task, TrainingTask):
            task = FunctionTask(task)
        streams = dict(streams)
        if not streams:
            raise EmobridgeError("Trainer.fit: no training streams")
        primary = primary or next(iter(streams))
        if primary not in streams:
            raise EmobridgeError(f"Trainer.fit: primary stream {primary!r} not in "
                                 f"{list(streams)}")
        sizes = {name: (batch_sizes or {}).get(name, cfg.batch_size) for name in streams}
        if validation is not None and not (validation.labels != UNLABELLED).any():
            raise EmobridgeError("Trainer.fit: validation data has no labels")

        seed_everything(cfg.seed, cfg.deterministic)
        device = self.device
        model.to(device)
        optimizer, scheduler = task.configure_optimizer(model, cfg)

        state = _RunState()
        ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir is not None else None
        result = TrainResult()
        if cfg.resume and ckpt_dir is not None and (ckpt_dir / "last.pt").exists():
            state = self._load_last(ckpt_dir / "last.pt", model, optimizer, scheduler, task)
            result.resumed_from_epoch = state.epoch
            model.to(device)

        writer = self._tensorboard()
        ctx = EpochContext(self, model, optimizer, cfg, device, state.epoch, cfg.epochs,
                           streams, np.random.default_rng([cfg.seed, state.epoch]),
                           state.history, global_step=state.global_step)
        if not state.finished:
            task.on_fit_start(ctx)
        bar = None
        if cfg.progress and not state.finished:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.epochs, initial=state.epoch, desc="epochs", unit="epoch")
        try:
            while not state.finished and state.epoch < cfg.epochs:
                record = self._run_epoch(model, task, ctx, state, optimizer, scheduler,
                                         primary, sizes, validation)
                state.history.append(record)
                self._log(state.history, writer, record)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()
                                     if k in ("loss", "val_ua") and v is not None})
                state.epoch += 1
                if (cfg.patience and validation is not None
                        and state.bad_epochs >= cfg.patience):
                    state.stopped_early = True
                if state.stopped_early or state.epoch >= cfg.epochs:
                    state.finished = True
                if ckpt_dir is not None:
                    self._save_last(ckpt_dir / "last.pt", model, optimizer, scheduler, task,
                                    state)
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()

        if cfg.restore_best and state.best_model is not None:
            model.load_state_dict(state.best_model)
        result.history = state.history
        result.best_epoch = state.best_epoch
        result.best_score = state.best_score
        result.stopped_early = state.stopped_early
        result.epochs_run = state.epoch
        return result

    def _run_epoch(self, model, task, ctx, state, optimizer, scheduler, primary, sizes,
                   validation) -> dict[str, Any]:
        cfg = self.config
        t0 = time.perf_counter()
        ctx.epoch = state.epoch
        ctx.rng = np.random.default_rng([cfg.seed, state.epoch])
        ctx.step_in_epoch = 0
        model.train()
        task.on_epoch_start(ctx)
        for name, data in ctx.streams.items():
            if not len(data):
                raise EmobridgeError(f"training stream {name!r} is empty")
        n = len(ctx.streams[primary])
        steps = n // sizes[primary] if cfg.drop_last and n >= sizes[primary] else math.ceil(
            n / sizes[primary])
        ctx.steps_per_epoch = steps
        iterators: dict[str, Iterator[Batch]] = {}
        for name, data in ctx.streams.items():
            if name == primary:
                iterators[name] = iterate_batches(data, sizes[name], shuffle=True, rng=ctx.rng,
                                                  crop_frames=cfg.crop_frames,
                                                  drop_last=cfg.drop_last)
            else:
                iterators[name] = _cycle(data, sizes[name], ctx.rng, cfg.crop_frames)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for _ in range(steps):
            batches = {name: next(it).to(ctx.device) for name, it in iterators.items()}
            model.train()
            losses = task.training_step(batches, ctx)
            if not isinstance(losses, Mapping) or "loss" not in losses:
                raise EmobridgeError("training_step must return a dict with a 'loss' entry")
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise EmobridgeError(f"loss became {loss.item()} at epoch {ctx.epoch + 1}, "
                                     f"step {ctx.step_in_epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            if loss.requires_grad:
                loss.backward()
                if cfg.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
            for key, value in losses.items():
                v = float(value.detach().item()) if torch.is_tensor(value) else float(value)
                sums[key] = sums.get(key, 0.0) + v
                counts[key] = counts.get(key, 0) + 1
            ctx.step_in_epoch += 1
            ctx.global_step += 1
        state.global_step = ctx.global_step
        record: dict[str, Any] = {"epoch": state.epoch + 1,
                                  "lr": float(optimizer.param_groups[0]["lr"])}
        record.update({k: sums[k] / counts[k] for k in sums})
        if scheduler is not None:
            scheduler.step()
        if validation is not None:
            model.eval()
            record.update(task.validate(model, validation, ctx))
            model.train()
            score = float(record[self.monitor])
            if state.best_score is None or score > state.best_score:
                state.best_score = score
                state.best_epoch = state.epoch + 1
                state.bad_epochs = 0
                state.best_model = {k: v.detach().cpu().clone()
                                    for k, v in model.state_dict().items()}
                if cfg.checkpoint_dir is not None:
                    _atomic_torch_save(
                        {"model": state.best_model, "epoch": state.best_epoch,
                         "score": score, "monitor": self.monitor},
                        Path(cfg.checkpoint_dir) / "best.pt")
            else:
                state.bad_epochs += 1
        extra = task.on_epoch_end(ctx)
        if extra:
            record.update({k: float(v) for k, v in extra.items()})
        record["time_s"] = time.perf_counter() - t0
        return record

    # -- logging -----------------------------------------------------------------------
    def _tensorboard(self):
        if self.config.tensorboard_dir is None:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn("tensorboard_dir is set but the tensorboard package is not "
                          "installed; no TensorBoard logs are written", stacklevel=3)
            return None
        return SummaryWriter(str(self.config.tensorboard_dir))

    def _log(self, history: list[dict[str, Any]], writer, record: dict[str, Any]) -> None:
        if self.config.log_csv is not None:
            write_history_csv(history, self.config.log_csv)
        if writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    writer.add_scalar(key, value, record["epoch"])

    # -- checkpoints -------------------------------------------------------------------
    def _save_last(self, path: Path, model, optimizer, scheduler, task, state) -> None:
        _atomic_torch_save({
            "format": CHECKPOINT_FORMAT,
            "config": self.config._fingerprint(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(),
            "task": _plain(task.training_state()),
            "state": _plain({k: v for k, v in vars(state).items() if k != "best_model"}),
            "best_model": state.best_model,
        }, path)

    def _load_last(self, path: Path, model, optimizer, scheduler, task) -> _RunState:
        ckpt = load_checkpoint(path)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise EmobridgeError(f"{path} is not an emobridge training checkpoint")
        mine = self.config._fingerprint()
        diff = {k: (ckpt["config"].get(k), v) for k, v in mine.items()
                if ckpt["config"].get(k) != v}
        if diff:
            raise ConfigError(f"cannot resume from {path}: settings changed "
                              f"(checkpoint, now): {diff}")
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise EmobridgeError(f"checkpoint {path} does not fit this model: {exc}") from None
        model.to(self.device)
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt["scheduler"] is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        task.load_training_state(ckpt["task"])
        state = _RunState(**ckpt["state"])
        state.best_model = ckpt["best_model"]
        if state.epoch < self.config.epochs and not state.stopped_early:
            state.finished = False  # asked for more epochs than the interrupted run
        return state


@dataclass
class _RunState:
    epoch: int = 0  # epochs completed
    global_step: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    finished: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    best_model: dict[str, torch.Tensor] | None = None


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path) -> Any:
    """Read a checkpoint with ``torch.load(weights_only=True)``: tensors, numbers, strings,
    lists, tuples and dicts only, so a planted file cannot run code. Anything else (a pickled
    object, a truncated or foreign file) raises :class:`EmobridgeError` naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise EmobridgeError(f"refusing checkpoint {path}: it holds Python objects beyond "
                             "tensors and plain values (loading it could run code)") from None
    except Exception as exc:  # a truncated or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EmobridgeError(f"cannot read checkpoint {path}: {first}") from None


def rng_state() -> dict[str, Any]:
    """The state of Python's, numpy's and torch's global RNGs as tensors and plain values
    (loadable with ``weights_only=True``)."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(words, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(w) for w in py["state"].tolist()), py["gauss"]))
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(value: Any) -> Any:
    """``value`` with numpy arrays as tensors and numpy scalars as Python numbers, so it
    survives ``torch.load(weights_only=True)``."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def write_history_csv(history: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Write per-epoch records as CSV (columns: union of keys, first-seen order), atomically."""
    columns: list[str] = []
    for record in history:
        columns.extend(k for k in record if k not in columns)
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for record in history:
            writer.writerow(record)

