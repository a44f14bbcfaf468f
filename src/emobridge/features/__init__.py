"""Feature extractors and the on-disk feature store.

``build_extractor("logmel:preset=nnpm")`` makes an extractor from a spec;
``FeatureStore(root).extract(manifest, extractor)`` computes and caches features, and
``FeatureStore(root).load(manifest, extractor)`` returns them in manifest row order.
"""

from emobridge.features.base import Extractor
from emobridge.features.pooling import pool, select_layers
from emobridge.features.registry import (
    available_extractors,
    build_extractor,
    parse_spec,
    register_extractor,
)
from emobridge.features.store import ExtractReport, FeatureStore, PruneReport

__all__ = [
    "ExtractReport",
    "Extractor",
    "FeatureStore",
    "PruneReport",
    "available_extractors",
    "build_extractor",
    "parse_spec",
    "pool",
    "register_extractor",
    "select_layers",
]
