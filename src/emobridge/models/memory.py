"""Dynamic external memory and the pseudo-multilabel pieces of NNPM (Li, Yan & Wang).

The memory ``M`` holds one L2-normalised feature per source utterance. A target feature ``h``
is compared with every slot by cosine similarity (``M @ normalise(h)``); the slots whose
similarity is at least ``gamma`` form its *pseudo multilabel* (a 0/1 vector over the memory
slots, eq. 4). The target loss is an MSE between the similarities and that multilabel with
hard negative mining (eq. 6-8).

Everything except :class:`ExternalMemory` is a pure function on tensors so the unit tests can
pin each step on hand-checked values.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from emobridge.errors import ConfigError

NoPositivePolicy = Literal["top_k", "skip", "negatives_only"]


def l2_normalise(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows of ``x`` scaled to unit L2 norm (zero rows stay zero)."""
    return F.normalize(x, p=2.0, dim=-1, eps=eps)


def memory_update(old: torch.Tensor, new: torch.Tensor, beta: float) -> torch.Tensor:
    """Weighted memory write of eq. 3: ``normalise(beta * normalise(new) + (1 - beta) * old)``.

    ``old`` are the current (unit-norm) slots, ``new`` the freshly computed features of the
    same utterances. ``new`` is normalised before mixing so that ``beta`` is a true mixing
    weight between two unit vectors. With ``beta == 0`` the slot keeps its old value.
    """
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"memory update rate beta must be in [0, 1], got {beta}")
    if old.shape != new.shape:
        raise ConfigError(f"memory update: old slots {tuple(old.shape)} vs new {tuple(new.shape)}")
    return l2_normalise(beta * l2_normalise(new) + (1.0 - beta) * old)


def linear_beta(step: int, total_steps: int, beta_max: float) -> float:
    """Update rate growing linearly from 0 (first step) to ``beta_max`` (last step)."""
    if total_steps <= 1:
        return float(beta_max)
    frac = min(max(step, 0), total_steps - 1) / (total_steps - 1)
    return float(beta_max) * frac


def memory_similarity(h: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``(batch, slots)`` between features ``h`` and unit-norm ``memory``."""
    return l2_normalise(h) @ memory.T


def pseudo_multilabels(
    similarity: torch.Tensor,
    gamma: float,
    no_positive: NoPositivePolicy = "top_k",
    fallback_top_k: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo multilabel over memory slots (eq. 4) and which rows take part in the loss.

    Parameters
    ----------
    similarity:
        ``(batch, slots)`` cosine similarities between target features and the memory.
    gamma:
        Slots with similarity ``>= gamma`` are positives (1), all others negatives (0).
    no_positive:
        What to do with a row that has no slot ``>= gamma`` (the paper leaves it open):
        ``"top_k"`` takes its ``fallback_top_k`` most similar slots as positives;
        ``"skip"`` leaves the row out of the target loss; ``"negatives_only"`` keeps the row
        with an all-zero multilabel (the literal reading: only the negative term acts).
    fallback_top_k:
        Positives per row under ``"top_k"``.

    Returns
    -------
    targets:
        float ``(batch, slots)`` 0/1 multilabel.
    active:
        bool ``(batch,)``: rows that enter the target loss.
    """
    if no_positive not in ("top_k", "skip", "negatives_only"):
        raise ConfigError(
            f"no_positive must be 'top_k', 'skip' or 'negatives_only', got {no_positive!r}"
        )
    positives = similarity >= gamma
    has_positive = positives.any(dim=1)
    active = torch.ones_like(has_positive)
    if no_positive == "top_k":
        k = min(int(fallback_top_k), similarity.shape[1])
        if k < 1:
            raise ConfigError(f"fallback_top_k must be >= 1, got {fallback_top_k}")
        top = similarity.topk(k, dim=1).indices
        fallback = torch.zeros_like(positives).scatter_(1, top, True)
        positives = torch.where(has_positive[:, None], positives, fallback)
    elif no_positive == "skip":
        active = has_positive
    return positives.to(similarity.dtype), active


def hard_negative_mask(
    similarity: torch.Tensor, targets: torch.Tensor, ratio: float | None
) -> torch.Tensor:
    """Hard negatives of eq. 7: per row, the top ``ratio`` fraction of negative slots.

    Negatives are the slots whose target is 0; they are ranked by similarity (largest first)
    and the first ``ceil(ratio * n_negatives)`` are kept (at least one when the row has any
    negative). ``ratio=None`` (or ``>= 1``) keeps every negative (the SNSA-wo-HL ablation).
    Ties are broken by slot order (``torch.sort`` is stable).
    """
    negatives = targets <= 0
    if ratio is None or ratio >= 1.0:
        return negatives
    if ratio <= 0:
        raise ConfigError(f"hard negative ratio must be in (0, 1], got {ratio}")
    n_neg = negatives.sum(dim=1)
    keep = torch.ceil(n_neg.to(torch.float64) * ratio).to(torch.long)
    keep = torch.where(n_neg > 0, keep.clamp(min=1), keep)
    # Rank negatives by similarity; positives go to the end with -inf.
    scores = similarity.masked_fill(~negatives, -math.inf)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    return negatives & (rank < keep[:, None])


def pseudo_multilabel_loss(
    similarity: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    active: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_pos, L_neg)`` of eq. 8: MSE on positive slots and on selected negative slots.

    Normalisation (the paper does not give it): ``L_pos`` is the mean of ``(s - 1)^2`` over
    every positive (row, slot) pair of the active rows, ``L_neg`` the mean of ``s^2`` over
    every selected negative pair. Averaging each part over its own pairs keeps the few
    positives from being swamped by the many negatives, which is the imbalance hard mining
    is meant to fix. A part with no pair is 0 (and carries no gradient).
    """
    if active is None:
        active = torch.ones(similarity.shape[0], dtype=torch.bool, device=similarity.device)
    pos = (targets > 0) & active[:, None]
    neg = negatives & active[:, None]
    sq_err = (similarity - targets) ** 2
    zero = similarity.sum() * 0.0
    l_pos = sq_err[pos].mean() if pos.any() else zero
    l_neg = sq_err[neg].mean() if neg.any() else zero
    return l_pos, l_neg


def memory_vote(
    similarity: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    gamma: float,
    top_k: int = 10,
    temperature: float = 0.1,
    smoothing: float = 1e-3,
) -> torch.Tensor:
    """Class probabilities from the labels of the matched memory slots.

    The voters of a row are its slots with similarity ``>= gamma``, or its ``top_k`` most
    similar slots when fewer than ``top_k`` pass ``gamma``. Each voter adds
    ``exp((s - s_max) / temperature)`` to its class; the votes plus ``smoothing`` per class
    are normalised to sum to 1 (so no class gets probability exactly 0).
    """
    if temperature <= 0:
        raise ConfigError(f"vote temperature must be > 0, got {temperature}")
    n_slots = similarity.shape[1]
    k = max(1, min(int(top_k), n_slots))
    above = similarity >= gamma
    top = torch.zeros_like(above).scatter_(1, similarity.topk(k, dim=1).indices, True)
    voters = torch.where((above.sum(dim=1) >= k)[:, None], above, top)
    s_max = similarity.max(dim=1, keepdim=True).values
    weights = torch.exp((similarity - s_max) / temperature) * voters
    onehot = F.one_hot(labels.long(), n_classes).to(similarity.dtype)
    votes = weights @ onehot + smoothing
    return votes / votes.sum(dim=1, keepdim=True)


class ExternalMemory(nn.Module):
    """One unit-norm feature per source utterance plus its label (buffers, no gradient).

    ``features`` and ``labels`` are registered buffers, so the memory is saved with a
    model's ``state_dict`` (needed when predictions come from a memory vote).
    """

    features: torch.Tensor
    labels: torch.Tensor

    def __init__(self, n_slots: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("features", torch.zeros(n_slots, dim))
        self.register_buffer("labels", torch.full((n_slots,), -1, dtype=torch.long))

    @property
    def n_slots(self) -> int:
        return int(self.features.shape[0])

    @torch.no_grad()
    def initialise(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Fill every slot (features are L2-normalised here)."""
        if features.shape != self.features.shape:
            raise ConfigError(
                f"memory initialise: got {tuple(features.shape)}, memory is "
                f"{tuple(self.features.shape)}"
            )
        if labels.shape != (self.n_slots,):
            raise ConfigError(f"memory initialise: {labels.shape[0]} labels for "
                              f"{self.n_slots} slots")
        self.features.copy_(l2_normalise(features.detach().to(self.features)))
        self.labels.copy_(labels.to(self.labels))

    @torch.no_grad()
    def write(self, index: torch.Tensor, features: torch.Tensor, beta: float) -> None:
        """Update slots ``index`` with ``features`` by eq. 3 (see :func:`memory_update`).

        The buffer is replaced by an updated copy rather than changed in place, so a
        similarity computed from the old memory earlier in the same step can still be
        back-propagated (autograd keeps the old tensor).
        """
        index = index.to(self.features.device).long()
        if index.numel() and (index.min() < 0 or index.max() >= self.n_slots):
            raise ConfigError(f"memory write: slot index outside [0, {self.n_slots})")
        updated = self.features.clone()
        updated[index] = memory_update(self.features[index], features.detach().to(updated), beta)
        self.features = updated

    @property
    def is_initialised(self) -> bool:
        """True once every slot has a label (after :meth:`initialise` or loading a state)."""
        return self.n_slots > 0 and bool((self.labels >= 0).all())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # The number of slots is the size of the source set, unknown when a saved model is
        # rebuilt: take the buffers' shapes from the state being loaded.
        for name in ("features", "labels"):
            incoming = state_dict.get(prefix + name)
            current = getattr(self, name)
            if incoming is not None and incoming.shape != current.shape:
                setattr(self, name, torch.empty(incoming.shape, dtype=current.dtype,
                                                device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def read(self) -> torch.Tensor:
        """The whole memory ``M_read`` (``(slots, dim)``, unit rows)."""
        return self.features

    def similarity(self, h: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of ``h`` (``(batch, dim)``) to every slot; differentiable in ``h``."""
        return memory_similarity(h, self.features)
