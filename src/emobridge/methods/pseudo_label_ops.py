"""Pure building blocks of the semi-supervised pseudo-labelling method.

Agarla et al., "Semi-supervised cross-lingual speech emotion recognition" (arXiv 2207.06767),
section 3.2. Everything here is a function of its arguments (randomness comes in as a
``numpy.random.Generator``), so each piece is tested on its own and
:class:`emobridge.methods.pseudo_label.PseudoLabel` only wires them together.

Notation (the paper's): ``p_i = softmax(h(x_i))`` the model's class probabilities for
utterance ``i``, ``C`` classes, a mini-batch of ``B`` utterances.

* Hard pseudo-labels, eq. (2): ``y~_i = argmax_c p_ic`` kept when ``g_i = 1[max_c p_ic >= tau]``.
* Prior regulariser, eq. (3): ``R_A = sum_c p_c log(p_c / hbar_c)`` with the uniform prior
  ``p_c = 1/C`` and ``hbar_c = (1/B) sum_i p_ic`` the batch-mean probability of class ``c``.
* Entropy regulariser, eq. (4): ``R_H = -(1/B) sum_i sum_c p_ic log p_ic`` (the text's
  "average per-sample entropy"; eq. (4) prints the sum, which is ``B`` times this).
* Mixup, eqs. (6)-(7): ``x = a x_p + (1 - a) x_q``, ``y = a y_p + (1 - a) y_q``,
  ``a ~ U(0, 1)``.
* Loss, eq. (5): ``L = L_CE + lambda_A R_A + lambda_H R_H``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from emobridge.errors import ConfigError, EmobridgeError

Reduction = str  # "mean" | "sum"


def _check_proba(proba: np.ndarray) -> np.ndarray:
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2:
        raise EmobridgeError(f"expected probabilities of shape (n, classes), got {proba.shape}")
    if proba.size and (np.any(proba < -1e-6) or not np.allclose(proba.sum(axis=1), 1.0,
                                                                  atol=1e-4)):
        raise EmobridgeError("probability rows must be non-negative and sum to 1")
    return proba


def confidence_mask(proba: np.ndarray, tau: float) -> np.ndarray:
    """Eq. (2): ``g_i = 1[max_c p_ic >= tau]`` per utterance (boolean, shape ``(n,)``)."""
    if not 0.0 < tau < 1.0:
        raise ConfigError(f"confidence threshold tau must lie in (0, 1), got {tau!r}")
    proba = _check_proba(proba)
    if not len(proba):
        return np.zeros(0, dtype=bool)
    return proba.max(axis=1) >= tau


def hard_pseudo_labels(proba: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Confident hard pseudo-labels.

    Returns ``(index, labels)``: positions of the rows whose top probability reaches ``tau``
    and their argmax class (both int64).
    """
    keep = confidence_mask(proba, tau)
    index = np.flatnonzero(keep).astype(np.int64)
    labels = np.asarray(proba)[index].argmax(axis=1).astype(np.int64) if len(index) else \
        np.zeros(0, dtype=np.int64)
    return index, labels


def soft_pseudo_labels(proba: np.ndarray) -> np.ndarray:
    """Soft pseudo-labels: the probability vectors themselves (every utterance is kept)."""
    return _check_proba(proba).astype(np.float32)


def oversample_indices(n_items: int, n_wanted: int, rng: np.random.Generator) -> np.ndarray:
    """Random oversampling of ``n_items`` utterances up to ``n_wanted`` (section 3.2.3).

    Each utterance is replicated ``n_wanted // n_items`` times and ``n_wanted % n_items``
    distinct ones, drawn at random, once more: the counts then differ by at most one, which
    keeps the replication random but not lopsided (a plain draw with replacement would
    give some of 25 utterances twice the weight of others). When ``n_items >= n_wanted``
    nothing is replicated (every index once). Returns shuffled int64 indices into the items.
    """
    if n_items < 0 or n_wanted < 0:
        raise EmobridgeError(f"oversample_indices: negative size ({n_items}, {n_wanted})")
    if n_items == 0:
        return np.zeros(0, dtype=np.int64)
    if n_items >= n_wanted:
        return rng.permutation(n_items).astype(np.int64)
    reps, extra = divmod(n_wanted, n_items)
    index = np.concatenate([np.tile(np.arange(n_items), reps),
                            rng.choice(n_items, size=extra, replace=False)])
    return rng.permutation(index).astype(np.int64)


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Class indices -> ``(n, n_classes)`` float32 one-hot rows."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise EmobridgeError(f"labels outside [0, {n_classes}): {sorted(set(labels.tolist()))}")
    out = np.zeros((len(labels), n_classes), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def _reduce(values: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    raise ConfigError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                       weight: torch.Tensor | None = None,
                       reduction: Reduction = "mean") -> torch.Tensor:
    """Eq. (8) with distribution targets: ``-(1/B) sum_i sum_c w_c y_ic log softmax(z_i)_c``
    (``w_c = 1`` without class weights).

    One-hot targets give the usual cross-entropy; soft and mixed targets work unchanged.
    """
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if weight is not None:
        weight = weight.to(device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(logits, targets.to(logits.dtype), weight=weight, reduction=reduction)


def prior_regulariser(logits: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (3): ``R_A = sum_c p_c log(p_c / hbar_c)``, ``hbar_c`` = batch-mean probability.

    ``prior`` defaults to uniform ``1/C``. It is ``KL(prior || hbar) >= 0``, zero when the
    batch spreads its probability mass as the prior does.
    """
    n_classes = logits.shape[1]
    if prior is None:
        prior = torch.full((n_classes,), 1.0 / n_classes, dtype=logits.dtype,
                           device=logits.device)
    # log hbar via logsumexp of log-probabilities: stable when a class mean is tiny.
    log_hbar = torch.logsumexp(F.log_softmax(logits, dim=1), dim=0) - math.log(logits.shape[0])
    return (prior * (torch.log(prior) - log_hbar)).sum()


def entropy_regulariser(logits: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Eq. (4): ``R_H = -(1/B) sum_i sum_c p_ic log p_ic`` (``reduction="sum"``: eq. (4) as
    printed, without the ``1/B``)."""
    log_p = F.log_softmax(logits, dim=1)
    return _reduce(-(log_p.exp() * log_p).sum(dim=1), reduction)


def semi_supervised_loss(logits: torch.Tensor, targets: torch.Tensor, lambda_a: float,
                         lambda_h: float, weight: torch.Tensor | None = None
                         ) -> dict[str, torch.Tensor]:
    """Eq. (5): ``L = L_CE + lambda_A R_A + lambda_H R_H`` over one mini-batch.

    ``L_CE`` and ``R_H`` are batch means (as in Tanaka et al. 2018, where the weights 0.8 and
    0.4 come from); ``R_A`` is a batch quantity by definition. Returns ``{"loss": L,
    "ce": L_CE, "r_a": R_A, "r_h": R_H}`` (the parts are logged per epoch).
    """
    ce = soft_cross_entropy(logits, targets, weight)
    r_a = prior_regulariser(logits)
    r_h = entropy_regulariser(logits)
    return {"loss": ce + lambda_a * r_a + lambda_h * r_h, "ce": ce, "r_a": r_a, "r_h": r_h}


def mixup(inputs: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator,
          mask: torch.Tensor | None = None, alpha: float | None = None,
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
    """Eqs. (6)-(7): mix each batch row ``p`` with a random partner ``q``.

    ``alpha ~ U(0, 1)`` is drawn once per mini-batch from ``rng`` (unless given) and the
    partners are a random permutation of the batch (Zhang et al. 2018 draw one coefficient
    per batch too). ``inputs`` is ``(B, dims)`` vectors or ``(B, frames, dims)`` padded frame
    crops with ``mask`` ``(B, frames)``; a mixed row is valid where either partner has a real
    frame (padding is zeros, so a shorter partner contributes silence-like zeros there).
    ``targets`` are ``(B, C)`` distributions. Returns the mixed inputs, targets, mask and
    ``alpha``.
    """
    if inputs.shape[0] != targets.shape[0]:
        raise EmobridgeError(f"mixup: {inputs.shape[0]} inputs but {targets.shape[0]} targets")
    if alpha is None:
        alpha = float(rng.uniform(0.0, 1.0))
    perm = torch.as_tensor(rng.permutation(inputs.shape[0]), device=inputs.device)
    mixed_x = alpha * inputs + (1.0 - alpha) * inputs[perm]
    mixed_y = alpha * targets + (1.0 - alpha) * targets[perm]
    mixed_mask = None if mask is None else (mask | mask[perm])
    return mixed_x, mixed_y, mixed_mask, alpha


def update_pseudo_pool(pool_index: np.ndarray, pool_targets: np.ndarray, new_index: np.ndarray,
                       new_targets: np.ndarray, policy: str) -> tuple[np.ndarray, np.ndarray]:
    """Merge one pseudo-labelling round into the pool of pseudo-labelled target utterances.

    ``*_index`` are positions in the unlabelled target set, ``*_targets`` ``(n, C)`` label
    distributions (one-hot for hard pseudo-labels).

    * ``"accumulate"`` (Algorithm 1, line 9: ``D = D u K'_t``): earlier pairs stay and the
      new ones are added as a set union of (utterance, label) pairs, so an utterance given
      the same label again is not duplicated, one given a different label appears with both.
    * ``"replace"``: only the latest round's pseudo-labels are kept.
    """
    new_index = np.asarray(new_index, dtype=np.int64)
    new_targets = np.asarray(new_targets, dtype=np.float32)
    if new_targets.ndim != 2 or len(new_targets) != len(new_index):
        raise EmobridgeError(f"pseudo-labels: {len(new_index)} indices but targets of shape "
                             f"{new_targets.shape}")
    if policy == "replace":
        return new_index.copy(), new_targets.copy()
    if policy != "accumulate":
        raise ConfigError(f"pseudo-label policy must be 'accumulate' or 'replace', got {policy!r}")
    pool_index = np.asarray(pool_index, dtype=np.int64)
    pool_targets = np.asarray(pool_targets, dtype=np.float32).reshape(len(pool_index),
                                                                      new_targets.shape[1])
    seen = {(int(i), t.tobytes()) for i, t in zip(pool_index, pool_targets, strict=True)}
    keep = []
    for j, (i, t) in enumerate(zip(new_index, new_targets, strict=True)):
        key = (int(i), t.tobytes())
        if key not in seen:
            seen.add(key)
            keep.append(j)
    keep_arr = np.asarray(keep, dtype=np.int64)
    if not len(pool_index):
        return new_index[keep_arr], new_targets[keep_arr]
    return (np.concatenate([pool_index, new_index[keep_arr]]),
            np.concatenate([pool_targets, new_targets[keep_arr]]))
