"""The :class:`Trainer`: epochs of steps over named streams, validation and early stopping,
checkpoints and resumption, batched inference."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from emobridge.errors import EmobridgeError
from emobridge.runtime import seed_everything, torch_device
from emobridge.training.batching import UNLABELLED, Batch, cycle_batches, iterate_batches
from emobridge.training.checkpoints import RunState, load_last, save_best, save_last
from emobridge.training.config import TrainConfig
from emobridge.training.history import EpochLog
from emobridge.training.task import EpochContext, FunctionTask, TrainingTask

if TYPE_CHECKING:
    from emobridge.methods.data import EmotionData

StepFn = Callable[[dict[str, Batch], EpochContext], dict[str, torch.Tensor]]

__all__ = ["TrainResult", "Trainer"]


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


@dataclass
class _Run:
    """The objects of one :meth:`Trainer.fit` call, passed between its steps."""

    model: nn.Module
    task: TrainingTask
    ctx: EpochContext
    state: RunState
    optimizer: torch.optim.Optimizer
    scheduler: Any
    primary: str
    sizes: dict[str, int]
    validation: EmotionData | None
    resumed_from: int | None = None


class Trainer:
    """Runs a :class:`TrainingTask` on a model. See :mod:`emobridge.training`."""

    monitor = "val_ua"

    def __init__(self, config: TrainConfig | None = None) -> None:
        self.config = config or TrainConfig()
        self.device = torch_device(self.config.device)

    # -- inference ---------------------------------------------------------------------
    @torch.no_grad()
    def predict_logits(self, model: nn.Module, data: EmotionData,
                       task: TrainingTask | None = None,
                       batch_size: int | None = None) -> np.ndarray:
        """Logits ``(len(data), classes)`` in row order; eval mode, whole utterances."""
        task = task or TrainingTask()
        return self.map_batches(model, data, task.predict_logits, batch_size)

    @torch.no_grad()
    def map_batches(self, model: nn.Module, data: EmotionData,
                    fn: Callable[[nn.Module, Batch], torch.Tensor],
                    batch_size: int | None = None) -> np.ndarray:
        """Apply ``fn(model, batch) -> (batch, ...)`` over ``data`` in eval mode, no grad;
        results in row order (e.g. embeddings)."""
        if not len(data):
            raise EmobridgeError("nothing to predict: empty data")
        was_training = model.training
        model.eval()
        model.to(self.device)
        size = batch_size or self.config.eval_batch_size or self.config.batch_size
        out: np.ndarray | None = None
        try:
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
        task: TrainingTask | StepFn,
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
        task = task if isinstance(task, TrainingTask) else FunctionTask(task)
        streams, primary = self._check_streams(streams, primary, validation)
        sizes = {name: (batch_sizes or {}).get(name, self.config.batch_size)
                 for name in streams}
        run = self._start(model, task, streams, primary, sizes, validation)
        self._epochs(run)
        state = run.state
        if self.config.restore_best and state.best_model is not None:
            model.load_state_dict(state.best_model)
        return TrainResult(history=state.history, best_epoch=state.best_epoch,
                           best_score=state.best_score, stopped_early=state.stopped_early,
                           epochs_run=state.epoch, resumed_from_epoch=run.resumed_from)

    @staticmethod
    def _check_streams(streams: Mapping[str, EmotionData], primary: str | None,
                       validation: EmotionData | None) -> tuple[dict[str, EmotionData], str]:
        streams = dict(streams)
        if not streams:
            raise EmobridgeError("Trainer.fit: no training streams")
        primary = primary or next(iter(streams))
        if primary not in streams:
            raise EmobridgeError(f"Trainer.fit: primary stream {primary!r} not in "
                                 f"{list(streams)}")
        if validation is not None and not (validation.labels != UNLABELLED).any():
            raise EmobridgeError("Trainer.fit: validation data has no labels")
        return streams, primary

    def _start(self, model: nn.Module, task: TrainingTask, streams: dict[str, EmotionData],
               primary: str, sizes: dict[str, int], validation: EmotionData | None) -> _Run:
        """Seed, build the optimiser, resume from ``last.pt`` when asked, call
        ``on_fit_start``."""
        cfg = self.config
        seed_everything(cfg.seed, cfg.deterministic)
        model.to(self.device)
        optimizer, scheduler = task.configure_optimizer(model, cfg)
        state, resumed_from = RunState(), None
        last = Path(cfg.checkpoint_dir) / "last.pt" if cfg.checkpoint_dir is not None else None
        if cfg.resume and last is not None and last.exists():
            state = load_last(last, cfg, model, optimizer, scheduler, task)
            resumed_from = state.epoch
            model.to(self.device)
        ctx = EpochContext(self, model, optimizer, cfg, self.device, state.epoch, cfg.epochs,
                           streams, np.random.default_rng([cfg.seed, state.epoch]),
                           state.history, global_step=state.global_step)
        if not state.finished:
            task.on_fit_start(ctx)
        return _Run(model, task, ctx, state, optimizer, scheduler, primary, sizes, validation,
                    resumed_from)

    def _epochs(self, run: _Run) -> None:
        """Run epochs until ``epochs``, early stopping or a finished resumed run."""
        cfg, state = self.config, run.state
        with EpochLog(cfg, state.epoch, active=not state.finished) as log:
            while not state.finished and state.epoch < cfg.epochs:
                record = self._run_epoch(run)
                state.history.append(record)
                log.add(state.history, record)
                state.epoch += 1
                if (cfg.patience and run.validation is not None
                        and state.bad_epochs >= cfg.patience):
                    state.stopped_early = True
                if state.stopped_early or state.epoch >= cfg.epochs:
                    state.finished = True
                if cfg.checkpoint_dir is not None:
                    save_last(Path(cfg.checkpoint_dir) / "last.pt", cfg, run.model,
                              run.optimizer, run.scheduler, run.task, state)

    def _run_epoch(self, run: _Run) -> dict[str, Any]:
        """One epoch: hooks, steps, scheduler, validation; its record."""
        t0 = time.perf_counter()
        ctx, state = run.ctx, run.state
        ctx.epoch = state.epoch
        ctx.rng = np.random.default_rng([self.config.seed, state.epoch])
        ctx.step_in_epoch = 0
        run.model.train()
        run.task.on_epoch_start(ctx)
        means = self._train_steps(run, self._epoch_batches(run))
        state.global_step = ctx.global_step
        record: dict[str, Any] = {"epoch": state.epoch + 1,
                                  "lr": float(run.optimizer.param_groups[0]["lr"]), **means}
        if run.scheduler is not None:
            run.scheduler.step()
        if run.validation is not None:
            record.update(self._validate(run))
        extra = run.task.on_epoch_end(ctx)
        if extra:
            record.update({k: float(v) for k, v in extra.items()})
        record["time_s"] = time.perf_counter() - t0
        return record

    def _epoch_batches(self, run: _Run) -> dict[str, Iterator[Batch]]:
        """This epoch's batch iterators (primary: one pass; others: cycled); sets
        ``ctx.steps_per_epoch``."""
        cfg, ctx = self.config, run.ctx
        for name, data in ctx.streams.items():
            if not len(data):
                raise EmobridgeError(f"training stream {name!r} is empty")
        n, size = len(ctx.streams[run.primary]), run.sizes[run.primary]
        ctx.steps_per_epoch = n // size if cfg.drop_last and n >= size else math.ceil(n / size)
        iterators: dict[str, Iterator[Batch]] = {}
        for name, data in ctx.streams.items():
            if name == run.primary:
                iterators[name] = iterate_batches(data, run.sizes[name], shuffle=True,
                                                  rng=ctx.rng, crop_frames=cfg.crop_frames,
                                                  drop_last=cfg.drop_last)
            else:
                iterators[name] = cycle_batches(data, run.sizes[name], ctx.rng,
                                                cfg.crop_frames)
        return iterators

    def _train_steps(self, run: _Run, iterators: dict[str, Iterator[Batch]]
                     ) -> dict[str, float]:
        """The epoch's optimisation steps; the mean of every returned loss."""
        ctx = run.ctx
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for _ in range(ctx.steps_per_epoch):
            batches = {name: next(it).to(ctx.device) for name, it in iterators.items()}
            run.model.train()
            losses = run.task.training_step(batches, ctx)
            self._optimise(run, losses)
            for key, value in losses.items():
                v = float(value.detach().item()) if torch.is_tensor(value) else float(value)
                sums[key] = sums.get(key, 0.0) + v
                counts[key] = counts.get(key, 0) + 1
            ctx.step_in_epoch += 1
            ctx.global_step += 1
        return {k: sums[k] / counts[k] for k in sums}

    def _optimise(self, run: _Run, losses: Mapping[str, torch.Tensor]) -> None:
        """Check the step's losses and take one optimiser step on ``losses["loss"]``."""
        ctx = run.ctx
        if not isinstance(losses, Mapping) or "loss" not in losses:
            raise EmobridgeError("training_step must return a dict with a 'loss' entry")
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise EmobridgeError(f"loss became {loss.item()} at epoch {ctx.epoch + 1}, "
                                 f"step {ctx.step_in_epoch + 1}")
        run.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
            if self.config.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(run.model.parameters(), self.config.max_grad_norm)
            run.optimizer.step()

    def _validate(self, run: _Run) -> dict[str, float]:
        """Validation metrics; keeps the best weights and counts epochs without progress."""
        state, model = run.state, run.model
        model.eval()
        metrics = run.task.validate(model, run.validation, run.ctx)
        model.train()
        score = float(metrics[self.monitor])
        if state.best_score is None or score > state.best_score:
            state.best_score = score
            state.best_epoch = state.epoch + 1
            state.bad_epochs = 0
            state.best_model = {k: v.detach().cpu().clone()
                                for k, v in model.state_dict().items()}
            if self.config.checkpoint_dir is not None:
                save_best(Path(self.config.checkpoint_dir) / "best.pt", state.best_model,
                          state.best_epoch, score, self.monitor)
        else:
            state.bad_epochs += 1
        return metrics
