"""Backbones and heads (SNSA, VGG, pooled / attention heads) and layers (masks, GRL).

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
from emobridge.models.vgg import VGG
from emobridge.models.wccn import DeepWCCN, WCCNTransform

#: Frames with at most this many dims look like a spectrogram (log-mel, LLDs): ``auto`` picks
#: SNSA for them and the attention head for wider (encoder) frames.
SPECTROGRAM_MAX_DIMS = 256

BACKBONES: dict[str, type[nn.Module]] = {
    "snsa": SNSA,
    "attention": AttentionHead,
    "mlp": MLPHead,
    "vgg": VGG,
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
    if kind in ("snsa", "vgg") and not is_sequence:
        raise ConfigError(f"backbone {kind!r} needs frame sequences, the features are vectors")
    return kind


def build_backbone(kind: str, input_dim: int, is_sequence: bool = True,
                   params: Mapping[str, Any] | None = None,
                   pretrained: bool = True) -> nn.Module:
    """Instantiate a backbone (see :func:`resolve_backbone`) with keyword ``params``.

    ``pretrained``: a backbone with an ``init_pretrained()`` method (``vgg``: ImageNet
    weights from ``params["weights"]``) gets it called; ``False`` when a saved model's own
    weights are about to be loaded into it."""
    name = resolve_backbone(kind, input_dim, is_sequence)
    try:
        module = BACKBONES[name](input_dim=input_dim, **dict(params or {}))
    except (TypeError, ValueError, RuntimeError) as exc:
        # unknown keywords, and sizes torch refuses (negative widths, dropout > 1...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"backbone {name!r}: bad parameters {dict(params or {})}: "
                          f"{first}") from None
    if pretrained and hasattr(module, "init_pretrained"):
        module.init_pretrained()
    return module


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "BACKBONES",
    "SNSA",
    "VGG",
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
