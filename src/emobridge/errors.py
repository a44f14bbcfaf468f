"""Exceptions raised by emobridge. Every message names the offending file or value."""

from __future__ import annotations


class EmobridgeError(Exception):
    """Base class of all errors raised on purpose by emobridge."""


class AudioError(EmobridgeError):
    """An audio file is unreadable, empty, silent or otherwise unusable."""


class CorpusError(EmobridgeError):
    """A corpus folder or manifest is malformed."""


class LabelError(EmobridgeError):
    """A label is unknown to a mapping or label set."""


class SpeakerLeakError(EmobridgeError):
    """A speaker occurs in more than one partition of a split."""


class ConfigError(EmobridgeError):
    """A configuration value is invalid."""


class FeatureError(EmobridgeError):
    """A feature extractor or the feature store failed."""
