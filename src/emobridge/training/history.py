"""Per-epoch records: the CSV curve, TensorBoard scalars and the progress bar."""

from __future__ import annotations

import csv
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from emobridge.errors import EmobridgeWarning
from emobridge.fileio import atomic_open
from emobridge.training.config import TrainConfig

__all__ = ["EpochLog", "write_history_csv"]


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


class EpochLog:
    """Where a run's epoch records go (``log_csv``, ``tensorboard_dir``, ``progress``).

    A context manager: the TensorBoard writer and the progress bar are closed on exit.
    """

    def __init__(self, config: TrainConfig, first_epoch: int, active: bool = True) -> None:
        self.config = config
        self.writer = self._tensorboard() if active else None
        self.bar = None
        if config.progress and active:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=config.epochs, initial=first_epoch, desc="epochs",
                            unit="epoch")

    def _tensorboard(self):
        if self.config.tensorboard_dir is None:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn("tensorboard_dir is set but the tensorboard package is not "
                          "installed; no TensorBoard logs are written", EmobridgeWarning,
                          stacklevel=4)
            return None
        return SummaryWriter(str(self.config.tensorboard_dir))

    def add(self, history: Sequence[Mapping[str, Any]], record: Mapping[str, Any]) -> None:
        """Log the epoch ``record`` (already appended to ``history``)."""
        if self.config.log_csv is not None:
            write_history_csv(history, self.config.log_csv)
        if self.writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["epoch"])
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()
                                  if k in ("loss", "val_ua") and v is not None})

    def __enter__(self) -> EpochLog:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
