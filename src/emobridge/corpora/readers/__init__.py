"""Built-in corpus readers; importing this package registers them all."""

from emobridge.corpora.readers import emodb  # noqa: F401
