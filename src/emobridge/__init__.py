"""emobridge: cross-lingual speech emotion recognition.

The pipeline, in the order of the package layout:
corpora (manifests, taxonomy) -> audio -> features (extractors, store) -> models / methods
-> training -> metrics / protocols -> experiments (configs, reports) -> inference (bundle, service).
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("emobridge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["Recognizer", "__version__"]


def __getattr__(name: str) -> Any:
    """``emobridge.Recognizer`` without importing torch on ``import emobridge``."""
    if name == "Recognizer":
        from emobridge.inference.recognizer import Recognizer

        return Recognizer
    raise AttributeError(f"module 'emobridge' has no attribute {name!r}")
