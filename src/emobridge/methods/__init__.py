"""Adaptation methods: one module per method, one contract (:class:`AdaptationMethod`)."""

from emobridge.methods.base import (
    AdaptationMethod,
    available_methods,
    build_method,
    register_method,
)
from emobridge.methods.data import UNLABELLED, EmotionData

__all__ = [
    "UNLABELLED",
    "AdaptationMethod",
    "EmotionData",
    "available_methods",
    "build_method",
    "register_method",
]
