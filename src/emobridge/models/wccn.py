"""Within-class covariance normalisation (WCCN): the Deep-WCCN layer and the classical
transform.

WCCN (Hatch & Stolcke, 2006) maps features with ``x -> B^T x`` where ``B`` is the Cholesky
factor of the inverse within-class covariance ``W^-1 = B B^T``; the mapped features have an
identity within-class covariance. Following the wav2vec 2.0 + Deep-WCCN paper (section 3.2):

- ``W`` is the average over classes of the class covariances
  ``S_c = 1/n_c sum_i (x_i - mu_c)(x_i - mu_c)^T`` (eq. 4; biased, as written there);
- the smoothed matrix is ``W' = (1 - smoothing) W + smoothing I`` (eq. 7, Hatch & Stolcke's
  smoothing toward the identity), ``smoothing`` in [0, 1];
- :class:`DeepWCCN` estimates the class covariances on mini-batches and keeps, per class, the
  *streaming average* of its batch estimates: ``S_c <- S_c + (S_c_batch - S_c) / t_c`` where
  ``t_c`` counts the batches that contributed to class ``c`` (an accumulator, every batch
  weighted equally; the paper's change from Eghbal-zadeh et al.'s exponential moving average).

Choices the paper leaves open (documented, and parameters where useful):

- a class contributes to a batch only with at least ``min_class_rows`` rows in it (default 2:
  one row has a zero covariance, which would pull ``W`` towards a singular matrix);
- unlabelled rows (label < 0) are ignored;
- ``W`` averages the classes seen so far (a class never seen is left out);
- ``eps * I`` is added before inverting so a singular ``W`` (``smoothing = 0``, fewer rows
  than dimensions) still gives a finite projection;
- until the first update the projection is the identity.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from emobridge.errors import ConfigError

__all__ = ["DeepWCCN", "WCCNTransform", "wccn_projection"]


def _check_smoothing(smoothing: float) -> float:
    if not isinstance(smoothing, (int, float)) or isinstance(smoothing, bool) \
            or not 0.0 <= float(smoothing) <= 1.0:
        raise ConfigError(f"WCCN smoothing must be a number in [0, 1], got {smoothing!r}")
    return float(smoothing)


def wccn_projection(within: torch.Tensor, smoothing: float, eps: float) -> torch.Tensor:
    """``B`` with ``B B^T = ((1 - smoothing) W + smoothing I + eps I)^-1`` (lower-triangular
    Cholesky factor, float64 internally); features are mapped as ``x @ B``."""
    w = within.detach().to(torch.float64)
    eye = torch.eye(w.shape[0], dtype=torch.float64, device=w.device)
    smoothed = (1.0 - smoothing) * w + smoothing * eye + eps * eye
    smoothed = 0.5 * (smoothed + smoothed.T)  # exact symmetry for the factorisations
    inverse = torch.linalg.inv(smoothed)
    factor, info = torch.linalg.cholesky_ex(0.5 * (inverse + inverse.T))
    if int(info) != 0:  # numerically indefinite: fall back to a larger ridge
        return wccn_projection(within, smoothing, max(eps * 100.0, 1e-6))
    return factor


def class_covariances(x: torch.Tensor, y: torch.Tensor, n_classes: int, min_rows: int = 2
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class biased covariances ``(n_classes, d, d)`` (float64) of the rows of ``x`` with
    label ``c``, and a bool ``(n_classes,)`` of the classes with at least ``min_rows`` rows
    (the others' matrices are zeros)."""
    x = x.detach().to(torch.float64)
    d = x.shape[1]
    covs = torch.zeros(n_classes, d, d, dtype=torch.float64, device=x.device)
    present = torch.zeros(n_classes, dtype=torch.bool, device=x.device)
    for c in range(n_classes):
        rows = x[y == c]
        if len(rows) < max(min_rows, 1):
            continue
        centred = rows - rows.mean(dim=0, keepdim=True)
        covs[c] = centred.T @ centred / len(rows)
        present[c] = True
    return covs, present


class DeepWCCN(nn.Module):
    """Deep-WCCN: WCCN as a layer without trainable parameters (see the module docstring).

    In training mode with labels, ``forward(x, y)`` first adds the batch's class covariances
    to the per-class streaming averages (on a detached copy: no gradient flows through the
    statistics), recomputes the projection ``B`` from their class average and returns
    ``x @ B``. Without labels, or in eval mode, it applies the last projection. Statistics and
    projection are buffers, so they are saved with the weights, restored with the best epoch
    and checkpointed for resumed runs.

    Parameters
    ----------
    dim:
        Feature dimension.
    n_classes:
        Number of classes.
    smoothing:
        ``alpha`` of ``W' = (1 - alpha) W + alpha I`` (paper eq. 7), in [0, 1].
    eps:
        Ridge added before inverting.
    min_class_rows:
        Rows a class needs in a batch to update its covariance.
    """

    def __init__(self, dim: int, n_classes: int, smoothing: float = 0.0, eps: float = 1e-6,
                 min_class_rows: int = 2) -> None:
        super().__init__()
        self.dim = int(dim)
        self.n_classes = int(n_classes)
        self.smoothing = _check_smoothing(smoothing)
        self.eps = float(eps)
        self.min_class_rows = int(min_class_rows)
        self.register_buffer("class_cov", torch.zeros(n_classes, dim, dim, dtype=torch.float64))
        self.register_buffer("class_batches", torch.zeros(n_classes, dtype=torch.int64))
        self.register_buffer("projection", torch.eye(dim))

    @property
    def output_dim(self) -> int:
        return self.dim

    @torch.no_grad()
    def update(self, x: torch.Tensor, y: torch.Tensor) -> bool:
        """Add one batch to the streaming class averages and recompute the projection;
        ``False`` (nothing changed) when no class had ``min_class_rows`` rows."""
        covs, present = class_covariances(x, y, self.n_classes, self.min_class_rows)
        if not bool(present.any()):
            return False
        self.class_batches += present.to(torch.int64)
        t = self.class_batches.clamp(min=1).to(torch.float64)[:, None, None]
        step = (covs - self.class_cov) / t
        self.class_cov += torch.where(present[:, None, None], step, torch.zeros_like(step))
        self.projection.copy_(wccn_projection(self.within_covariance(), self.smoothing,
                                              self.eps).to(self.projection.dtype))
        return True

    def within_covariance(self) -> torch.Tensor:
        """The current ``W``: the mean of the class averages of the classes seen so far."""
        seen = self.class_batches > 0
        if not bool(seen.any()):
            return torch.eye(self.dim, dtype=torch.float64, device=self.class_cov.device)
        return self.class_cov[seen].mean(dim=0)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.training and y is not None:
            self.update(x, y)
        return x @ self.projection.to(x.dtype)


class WCCNTransform:
    """Classical WCCN fitted once on a whole training set (numpy): ``transform(X) = X @ B``
    with ``B`` from the class covariances of ``fit(X, y)`` (eq. 4-5, smoothing eq. 7).

    Parameters are those of :class:`DeepWCCN`; ``projection_`` ``(d, d)`` after ``fit``.
    """

    def __init__(self, smoothing: float = 0.0, eps: float = 1e-6) -> None:
        self.smoothing = _check_smoothing(smoothing)
        self.eps = float(eps)

    def fit(self, x: np.ndarray, y: np.ndarray) -> WCCNTransform:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y)
        classes = np.unique(y[y >= 0])
        covs, present = class_covariances(torch.from_numpy(x), torch.from_numpy(y),
                                          int(classes.max()) + 1 if len(classes) else 0,
                                          min_rows=1)
        if not bool(present.any()):
            raise ConfigError("WCCN: no labelled rows to estimate the within-class covariance")
        within = covs[present].mean(dim=0)
        self.projection_ = wccn_projection(within, self.smoothing, self.eps).numpy()
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.projection_
