"""Weight deltas: what fine-tuning changed in a pretrained module, small enough to ship.

A delta maps a parameter name of the pretrained module (``layers.2.fc1.weight``) to its
change. Vectors (biases, layer norms) are stored whole; a matrix is stored whole or, with
``rank = r``, as two factors ``<name>.u`` ``(out, r)`` and ``<name>.v`` ``(r, in)`` whose
product is the truncated SVD of its change: the best rank-``r`` approximation in Frobenius
norm (Eckart-Young). Fine-tuning moves a pretrained transformer's weights along few
directions (Hu et al. 2022, LoRA, section 4.2), so a small rank keeps almost all of the
change: on Whisper base's blocks 2-4, rank 16 takes 0.92 MB in float16 against 18.9 MB for
the blocks and keeps the recipe within 0.5 UA points (``benchmarks/RESULTS.md``,
"finetune-ranks").

On disk: a safetensors file (float16 by default), its metadata ``format`` =
:data:`DELTA_FORMAT` plus what the writer records (e.g. the layers and the rank). Loading
checks every name, shape and value against the module before anything is changed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from emobridge.errors import EmobridgeError, FeatureError

__all__ = ["DELTA_FORMAT", "apply_delta", "read_delta", "weight_delta", "write_delta"]

DELTA_FORMAT = "emobridge-weight-delta-1"
_DTYPES = {"float16": np.float16, "float32": np.float32}


def weight_delta(tuned: Mapping[str, torch.Tensor], pretrained: Mapping[str, torch.Tensor],
                 rank: int | None = 16) -> dict[str, np.ndarray]:
    """The change from ``pretrained`` to ``tuned`` (state dicts with the same names) as a
    delta, float32: matrices cut to ``rank`` (``None``: whole), vectors whole."""
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise EmobridgeError(f"weight delta: rank must be a positive int or None, got {rank!r}")
    if set(tuned) != set(pretrained):
        raise EmobridgeError("weight delta: the tuned and pretrained parameters differ in "
                             f"names: {sorted(set(tuned) ^ set(pretrained))[:3]}")
    delta: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for name, weight in tuned.items():
            change = weight.detach().float().cpu() - pretrained[name].detach().float().cpu()
            if change.ndim != 2 or rank is None or rank >= min(change.shape):
                delta[name] = change.numpy()
                continue
            u, s, vt = torch.linalg.svd(change, full_matrices=False)
            delta[name + ".u"] = (u[:, :rank] * s[:rank]).numpy()
            delta[name + ".v"] = vt[:rank].numpy()
    return delta


def _changes(module: nn.Module, delta: Mapping[str, np.ndarray], source: str
             ) -> dict[str, torch.Tensor]:
    """Each changed parameter's full change, checked against ``module``'s parameters."""
    params = dict(module.named_parameters())
    changes: dict[str, torch.Tensor] = {}
    for key in delta:
        name = key[:-2] if key.endswith((".u", ".v")) else key
        if name not in params:
            raise FeatureError(f"{source}: {key!r} is not a parameter of the model "
                               f"(e.g. {next(iter(params), '')!r})")
        if name in changes:
            continue
        if name != key:
            u, v = delta.get(name + ".u"), delta.get(name + ".v")
            if u is None or v is None or u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[0]:
                raise FeatureError(f"{source}: {name!r} needs factors '.u' (out, r) and '.v' "
                                   "(r, in) of matching rank")
            change = torch.from_numpy(u.astype(np.float32)) @ torch.from_numpy(
                v.astype(np.float32))
        else:
            change = torch.from_numpy(np.asarray(delta[key], dtype=np.float32))
        if tuple(change.shape) != tuple(params[name].shape):
            raise FeatureError(f"{source}: {name!r} has shape {tuple(change.shape)}, the "
                               f"model's is {tuple(params[name].shape)}")
        if not torch.isfinite(change).all():
            raise FeatureError(f"{source}: {name!r} holds non-finite values")
        changes[name] = change
    return changes


def apply_delta(module: nn.Module, delta: Mapping[str, np.ndarray], source: str = "delta"
                ) -> None:
    """Add ``delta`` to ``module``'s parameters in place; every entry is checked first, so a
    bad delta (``source`` names it in the :class:`~emobridge.errors.FeatureError`) changes
    nothing."""
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, change in _changes(module, delta, source).items():
            params[name].add_(change.to(params[name].device, params[name].dtype))


def write_delta(path: str | os.PathLike[str], delta: Mapping[str, np.ndarray],
                metadata: Mapping[str, str] | None = None, dtype: str = "float16") -> None:
    """Write ``delta`` to a safetensors file atomically, in ``dtype``, with ``metadata``."""
    from emobridge.fileio import write_arrays

    if dtype not in _DTYPES:
        raise EmobridgeError(f"weight delta: dtype must be one of {sorted(_DTYPES)}, got "
                             f"{dtype!r}")
    write_arrays(path, {k: np.asarray(v).astype(_DTYPES[dtype]) for k, v in delta.items()},
                 {**(metadata or {}), "format": DELTA_FORMAT})


def read_delta(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The delta and metadata of a file :func:`write_delta` wrote; anything else (another
    safetensors file, a broken one) raises :class:`~emobridge.errors.FeatureError`."""
    from emobridge.fileio import read_arrays

    try:
        arrays, metadata = read_arrays(path, with_metadata=True)
    except EmobridgeError as exc:
        raise FeatureError(str(exc)) from None
    if metadata.get("format") != DELTA_FORMAT:
        raise FeatureError(f"{path}: not a weight delta (format {metadata.get('format')!r}, "
                           f"expected {DELTA_FORMAT!r})")
    if not arrays:
        raise FeatureError(f"{path}: the weight delta is empty")
    return arrays, metadata
