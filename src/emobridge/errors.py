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


class UnknownNameError(EmobridgeError, KeyError):
    """A name (reader, extractor, method, label set...) is not registered.

    Also a ``KeyError`` so mapping-style lookups keep working; the message is printed as is
    (``KeyError`` would quote it).
    """

    def __str__(self) -> str:
        return Exception.__str__(self)


class OutputError(EmobridgeError):
    """An output folder or file cannot be written as asked (read-only, full, not ours)."""


class InterruptedRun(EmobridgeError):
    """A run was interrupted (Ctrl-C, SIGTERM); what was completed is kept."""


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system fault: the path and the reason, no traceback."""
    path = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or str(exc)
    return f"{path}: {reason}" if path else reason


class EmobridgeWarning(UserWarning):
    """Something suspicious but not fatal in the user's data or settings (one speaker in a
    corpus, classes missing from a test set...). The CLI prints it as one ``warning:`` line."""
