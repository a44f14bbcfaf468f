"""Distribution-matching losses between a source and a target batch of features.

- :func:`mmd`: maximum mean discrepancy (Gretton et al., JMLR 2012) with a Gaussian kernel,
  the loss of Baklouti et al.'s domain-adaptive transfer (their eq. 2).
- :func:`coral`: CORAL (Sun & Saenko, ECCV-W 2016), the distance between the two feature
  covariances.
- :func:`domain_discrepancy`: either one by name, what ``NeuralMethod(domain_loss=...)`` calls.

Choices (all parameters of :func:`mmd`):

- ``estimator``: ``"biased"`` (default) is the paper's eq. 2 -- the V-statistic
  ``mean K_ss - 2 mean K_st + mean K_tt`` with the diagonals included; it is >= 0 and exactly
  0 for two identical samples. ``"unbiased"`` drops the diagonals of ``K_ss`` and ``K_tt``
  (the U-statistic: zero in expectation for equal distributions, may be slightly negative).
  ``"linear"`` is Gretton et al.'s linear-time estimate over disjoint pairs, O(n) instead of
  O(n^2) (noisier; for large batches).
- ``kernel``: ``"gaussian"`` (default, the paper's) ``exp(-||a - b||^2 / (2 sigma^2))``, or
  ``"multi"``: the mean of ``kernel_num`` Gaussians with ``sigma^2 * kernel_mul^i``,
  ``i = -(kernel_num // 2) ... kernel_num // 2`` (Long et al., ICML 2015: a family of
  bandwidths instead of one guess).
- ``bandwidth``: ``None`` (default) is the median heuristic, ``sigma^2`` = half the median
  squared distance between distinct rows of the pooled source + target batch (so the base
  kernel is ``exp(-d^2 / median d^2)``), computed per batch without gradient; a number fixes
  ``sigma``.

Rows of a feature batch with more than 2 dims are flattened. A side with too few rows for the
estimator (fewer than 2 for ``"unbiased"``, ``"linear"`` and CORAL; none at all for
``"biased"``) gives a loss of 0 that still belongs to the graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch

from emobridge.errors import ConfigError

__all__ = ["DOMAIN_LOSSES", "check_domain_loss", "coral", "domain_discrepancy", "median_bandwidth",
           "mmd"]

Estimator = Literal["biased", "unbiased", "linear"]
Kernel = Literal["gaussian", "multi"]

#: Names accepted by ``domain_loss`` (``"none"``: no distribution-matching term).
DOMAIN_LOSSES = ("none", "mmd", "coral")


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1) if x.dim() != 2 else x


def _zero(*tensors: torch.Tensor) -> torch.Tensor:
    return sum(t.sum() for t in tensors) * 0.0


def median_bandwidth(x: torch.Tensor) -> torch.Tensor:
    """``sigma^2`` of the median heuristic: half the median squared distance between distinct
    rows of ``x`` (no gradient; 1 when every row is equal)."""
    with torch.no_grad():
        rows, cols = torch.triu_indices(len(x), len(x), offset=1, device=x.device)
        pairs = torch.cdist(x, x).pow(2)[rows, cols]  # each distinct pair once
        med = pairs.quantile(0.5) if pairs.numel() else torch.ones((), device=x.device)
        return torch.where(med > 0, med / 2, torch.ones_like(med))


def _sigmas2(base: torch.Tensor, kernel: str, kernel_num: int, kernel_mul: float
             ) -> list[torch.Tensor]:
    if kernel == "gaussian":
        return [base]
    if kernel != "multi":
        raise ConfigError(f"mmd: kernel must be 'gaussian' or 'multi', got {kernel!r}")
    if kernel_num < 1 or kernel_mul <= 0:
        raise ConfigError(f"mmd: kernel_num must be >= 1 and kernel_mul > 0, got "
                          f"{kernel_num}, {kernel_mul}")
    return [base * float(kernel_mul) ** (i - kernel_num // 2) for i in range(kernel_num)]


def _kernel(d2: torch.Tensor, sigmas2: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([torch.exp(-d2 / (2 * s2)) for s2 in sigmas2]).mean(dim=0)


def _base_sigma2(pooled: torch.Tensor, bandwidth: float | None) -> torch.Tensor:
    if bandwidth is None:
        return median_bandwidth(pooled)
    if not bandwidth > 0:
        raise ConfigError(f"mmd: bandwidth must be > 0 or None (median heuristic), got "
                          f"{bandwidth!r}")
    return torch.tensor(float(bandwidth) ** 2, device=pooled.device, dtype=pooled.dtype)


def mmd(source: torch.Tensor, target: torch.Tensor, *, estimator: Estimator = "biased",
        kernel: Kernel = "gaussian", bandwidth: float | None = None, kernel_num: int = 5,
        kernel_mul: float = 2.0) -> torch.Tensor:
    """Squared MMD between the rows of ``source`` ``(n, ...)`` and ``target`` ``(m, ...)``.

    See the module docstring for ``estimator``, ``kernel`` (with ``kernel_num`` /
    ``kernel_mul``) and ``bandwidth``. Differentiable in both inputs.
    """
    s, t = _rows(source), _rows(target)
    if s.shape[1] != t.shape[1]:
        raise ConfigError(f"mmd: source and target features differ in width "
                          f"({s.shape[1]} vs {t.shape[1]})")
    if estimator == "linear":
        return _linear_mmd(s, t, kernel, bandwidth, kernel_num, kernel_mul)
    if estimator not in ("biased", "unbiased"):
        raise ConfigError(f"mmd: estimator must be 'biased', 'unbiased' or 'linear', got "
                          f"{estimator!r}")
    n, m = len(s), len(t)
    if min(n, m) < (2 if estimator == "unbiased" else 1):
        return _zero(s, t)
    pooled = torch.cat([s, t])
    sig = _sigmas2(_base_sigma2(pooled, bandwidth), kernel, kernel_num, kernel_mul)
    k = _kernel(torch.cdist(pooled, pooled).pow(2), sig)
    k_ss, k_tt, k_st = k[:n, :n], k[n:, n:], k[:n, n:]
    if estimator == "biased":
        return k_ss.mean() + k_tt.mean() - 2 * k_st.mean()
    ss = (k_ss.sum() - k_ss.diagonal().sum()) / (n * (n - 1))
    tt = (k_tt.sum() - k_tt.diagonal().sum()) / (m * (m - 1))
    return ss + tt - 2 * k_st.mean()


def _linear_mmd(s: torch.Tensor, t: torch.Tensor, kernel: str, bandwidth: float | None,
                kernel_num: int, kernel_mul: float) -> torch.Tensor:
    """Gretton et al. (2012) linear-time estimate over pairs ``(2i, 2i+1)`` of each side."""
    pairs = min(len(s), len(t)) // 2
    if pairs < 1:
        return _zero(s, t)
    s1, s2 = s[0:2 * pairs:2], s[1:2 * pairs:2]
    t1, t2 = t[0:2 * pairs:2], t[1:2 * pairs:2]
    if bandwidth is None:  # median of the distances the estimate uses: stays O(n)
        with torch.no_grad():
            d = torch.cat([(s1 - s2), (t1 - t2), (s1 - t2), (s2 - t1)]).pow(2).sum(1)
            med = d.quantile(0.5)
            base = torch.where(med > 0, med / 2, torch.ones_like(med))
    else:
        base = _base_sigma2(s, bandwidth)
    sig = _sigmas2(base, kernel, kernel_num, kernel_mul)

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _kernel((a - b).pow(2).sum(1), sig)

    return (k(s1, s2) + k(t1, t2) - k(s1, t2) - k(s2, t1)).mean()


def coral(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CORAL loss ``||C_s - C_t||_F^2 / (4 d^2)`` with the unbiased covariances ``C`` of the
    rows of ``source`` and ``target`` (``d`` features)."""
    s, t = _rows(source), _rows(target)
    if s.shape[1] != t.shape[1]:
        raise ConfigError(f"coral: source and target features differ in width "
                          f"({s.shape[1]} vs {t.shape[1]})")
    if min(len(s), len(t)) < 2:
        return _zero(s, t)
    d = s.shape[1]

    def cov(x: torch.Tensor) -> torch.Tensor:
        xc = x - x.mean(dim=0, keepdim=True)
        return xc.T @ xc / (len(x) - 1)

    return (cov(s) - cov(t)).pow(2).sum() / (4 * d * d)


_MMD_OPTIONS = ("estimator", "kernel", "bandwidth", "kernel_num", "kernel_mul")


def check_domain_loss(name: str, params: Mapping[str, Any] | None) -> None:
    """Raise :class:`ConfigError` for an unknown loss name or option (before training)."""
    if name not in DOMAIN_LOSSES:
        raise ConfigError(f"domain_loss must be one of {', '.join(DOMAIN_LOSSES)}; got "
                          f"{name!r}")
    allowed = _MMD_OPTIONS if name == "mmd" else ()
    unknown = sorted(set(params or {}) - set(allowed))
    if unknown:
        raise ConfigError(f"domain_loss_params: unknown options {unknown} for "
                          f"domain_loss={name!r}; valid: {list(allowed) or 'none'}")
    probe = torch.zeros(4, 2)
    probe[0, 0] = 1.0
    try:  # bad option values fail here, not after the first epochs
        domain_discrepancy(name, probe, probe + 1, params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"domain_loss_params {dict(params or {})}: {exc}") from None


def domain_discrepancy(name: str, source: torch.Tensor, target: torch.Tensor,
                       params: Mapping[str, Any] | None = None) -> torch.Tensor:
    """The distribution-matching loss ``name`` (``"mmd"`` with :func:`mmd`'s keyword
    ``params``, or ``"coral"``) between two feature batches; ``"none"`` gives 0."""
    if name == "mmd":
        return mmd(source, target, **dict(params or {}))
    if name == "coral":
        return coral(source, target)
    if name == "none":
        return _zero(source, target)
    raise ConfigError(f"domain_loss must be one of {', '.join(DOMAIN_LOSSES)}; got {name!r}")
