"""Training settings: everything the loop needs that is not the model or the loss."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from emobridge.errors import ConfigError

__all__ = ["TrainConfig"]


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
        for name, low in (("lr", 0.0), ("lr_decay_gamma", 0.0), ("max_grad_norm", 0.0)):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > low):
                raise ConfigError(f"{name} must be a finite number > 0, got {value}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be a finite number >= 0, got "
                              f"{self.weight_decay}")
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

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the interrupted one."""
        return {k: v for k, v in self.to_dict().items() if k not in self._RESUME_FREE}


