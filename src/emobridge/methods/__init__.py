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

# Built-in methods register themselves on import: one line per method module.
import emobridge.methods.dann  # noqa: E402, F401
import emobridge.methods.deep_wccn  # noqa: E402, F401
import emobridge.methods.mmd  # noqa: E402, F401
import emobridge.methods.nnpm  # noqa: E402, F401
import emobridge.methods.pseudo_label  # noqa: E402, F401
import emobridge.methods.random_forest  # noqa: E402, F401
import emobridge.methods.recommended  # noqa: E402, F401
import emobridge.methods.source_only  # noqa: E402, F401
import emobridge.methods.supervised  # noqa: E402, F401
import emobridge.methods.tuned_recipe  # noqa: E402, F401
