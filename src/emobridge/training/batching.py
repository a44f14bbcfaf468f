"""Mini-batches: padding and masks, random crops, one pass over a stream or an endless
cycle of it.

Plain index arithmetic over in-memory features: every shuffle and crop draws from the
epoch's ``numpy.random.Generator``, so batches are reproducible and a resumed run sees the
same ones (a ``torch.utils.data.DataLoader`` would add worker seeding and nothing else here).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from emobridge.errors import EmobridgeError

if TYPE_CHECKING:
    from emobridge.methods.data import EmotionData

#: Label of an unlabelled utterance; equals :data:`emobridge.methods.data.UNLABELLED`. Not
#: imported from there: importing :mod:`emobridge.methods` registers the methods, which import
#: this package.
UNLABELLED = -1

__all__ = ["UNLABELLED", "Batch", "collate", "cycle_batches", "iterate_batches"]


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


def cycle_batches(data: EmotionData, batch_size: int, rng: np.random.Generator,
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


