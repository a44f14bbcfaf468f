"""Feature extractors and the on-disk feature store."""

from emobridge.features.base import Extractor

__all__ = ["Extractor"]
