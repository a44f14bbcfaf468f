"""Corpus readers, the manifest and the emotion taxonomy."""

from emobridge.corpora.base import (
    CorpusReader,
    ScanProblem,
    ScanResult,
    Utterance,
    available_readers,
    get_reader,
)
from emobridge.corpora.manifest import (
    MANIFEST_COLUMNS,
    make_manifest,
    manifest_stats,
    read_manifest,
    validate_manifest,
    write_manifest,
)
from emobridge.corpora.taxonomy import LABEL_SETS, LabelSet, canonical_emotion

__all__ = [
    "LABEL_SETS",
    "MANIFEST_COLUMNS",
    "CorpusReader",
    "LabelSet",
    "ScanProblem",
    "ScanResult",
    "Utterance",
    "available_readers",
    "canonical_emotion",
    "get_reader",
    "make_manifest",
    "manifest_stats",
    "read_manifest",
    "validate_manifest",
    "write_manifest",
]
