"""Backbones and heads (SNSA, pooled / attention heads) and layers (masks, GRL).

:func:`build_backbone` picks one from the shape of the features.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from emobridge.errors import ConfigError
from emobridge.models.heads import AttentionHead, EmotionClassifier, MLPHead
from emobridge.models.layers import (
    AttentionPooling,
    GradientReversal,
    dann_lambda,
    grad_reverse,
    lengths_to_mask,
    masked_mean,
    masked_softmax,
)
from emobridge.models.snsa import SNSA
from emobridge.models.wccn import DeepWCCN, WCCNTransform

#: Frames with at most this many dims look like a spectrogram (log-mel, LLDs): ``auto`` picks
#: SNSA for them and the attention head for wider (encoder) frames.
SPECTROGRAM_MAX_DIMS = 256

BACKBONES: dict[str, type[nn.Module]] = {
    "snsa": SNSA,
    "attention": AttentionHead,
    "mlp": MLPHead,
}


def resolve_backbone(kind: str, input_dim: int, is_sequence: bool) -> str:
    """``auto`` -> ``mlp`` for vectors, ``snsa`` for frames of <= 256 dims (spectrogram-like),
    ``attention`` for wider frames (encoder features). Other names are checked and returned."""
    if kind == "auto":
        if not is_sequence:
            return "mlp"
        return "snsa" if input_dim <= SPECTROGRAM_MAX_DIMS else "attention"
    if kind not in BACKBONES:
        raise ConfigError(f"unknown backbone {kind!r}; known: auto, {', '.join(BACKBONES)}")
    if kind == "snsa" and not is_sequence:
        raise ConfigError("backbone 'snsa' needs frame sequences, the features are vectors")
    return kind


def build_backbone(kind: str, input_dim: int, is_sequence: bool = True,
                   params: Mapping[str, Any] | None = None) -> nn.Module:
    """Instantiate a backbone (see :func:`resolve_backbone`) with keyword ``params``."""
    name = resolve_backbone(kind, input_dim, is_sequence)
    try:
        return BACKBONES[name](input_dim=input_dim, **dict(params or {}))
    except (TypeError, ValueError, RuntimeError) as exc:
        # unknown keywords, and sizes torch refuses (negative widths, dropout > 1...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"backbone {name!r}: bad parameters {dict(params or {})}: "
                          f"{first}") from None


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "BACKBONES",
    "SNSA",
    "AttentionHead",
    "AttentionPooling",
    "DeepWCCN",
    "EmotionClassifier",
    "GradientReversal",
    "MLPHead",
    "WCCNTransform",
    "build_backbone",
    "count_parameters",
    "dann_lambda",
    "grad_reverse",
    "lengths_to_mask",
    "masked_mean",
    "masked_softmax",
    "resolve_backbone",
]
