"""Checkpoints of a training run: what ``last.pt`` / ``best.pt`` hold, and reading them
safely.

Everything written is tensors and plain values (RNG states included), so every read is
``torch.load(weights_only=True)``: a planted checkpoint cannot run code.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from emobridge.errors import ConfigError, EmobridgeError
from emobridge.fileio import atomic_path

if TYPE_CHECKING:
    from emobridge.training.config import TrainConfig
    from emobridge.training.task import TrainingTask

CHECKPOINT_FORMAT = 1

__all__ = ["CHECKPOINT_FORMAT", "RunState", "load_checkpoint", "load_last", "rng_state",
           "save_best", "save_last", "set_rng_state"]


@dataclass
class RunState:
    """Progress of a run: what ``last.pt`` restores besides the weights."""

    epoch: int = 0  # epochs completed
    global_step: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    finished: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    best_model: dict[str, torch.Tensor] | None = None


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file renamed over ``path``."""
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


def plain(value: Any) -> Any:
    """``value`` with numpy arrays as tensors and numpy scalars as Python numbers, so it
    survives ``torch.load(weights_only=True)`` (a task's :meth:`training_state`)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


def save_best(path: Path, weights: dict[str, torch.Tensor], epoch: int, score: float,
              monitor: str) -> None:
    """``best.pt``: the weights of the best validation epoch."""
    atomic_torch_save({"model": weights, "epoch": epoch, "score": score, "monitor": monitor},
                      path)


def save_last(path: Path, config: TrainConfig, model: nn.Module, optimizer, scheduler,
              task: TrainingTask, state: RunState) -> None:
    """``last.pt``: everything a resumed run needs to continue exactly."""
    atomic_torch_save({
        "format": CHECKPOINT_FORMAT,
        "config": config.fingerprint(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
        "task": plain(task.training_state()),
        "state": plain({k: v for k, v in vars(state).items() if k != "best_model"}),
        "best_model": state.best_model,
    }, path)


def load_last(path: Path, config: TrainConfig, model: nn.Module, optimizer, scheduler,
              task: TrainingTask) -> RunState:
    """Restore a run from ``last.pt`` (model, optimizer, scheduler, RNGs, task state) and
    return its :class:`RunState`; changed settings raise :class:`ConfigError`."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise EmobridgeError(f"{path} is not an emobridge training checkpoint")
    diff = {k: (ckpt["config"].get(k), v) for k, v in config.fingerprint().items()
            if ckpt["config"].get(k) != v}
    if diff:
        raise ConfigError(f"cannot resume from {path}: settings changed "
                          f"(checkpoint, now): {diff}")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise EmobridgeError(f"checkpoint {path} does not fit this model: {first}") from None
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt["scheduler"] is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    task.load_training_state(ckpt["task"])
    state = RunState(**ckpt["state"])
    state.best_model = ckpt["best_model"]
    if state.epoch < config.epochs and not state.stopped_early:
        state.finished = False  # asked for more epochs than the interrupted run
    return state
