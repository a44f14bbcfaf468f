"""emobridge: cross-lingual speech emotion recognition.

The pipeline, in the order of the package layout:
corpora (manifests, taxonomy) -> audio -> features (extractors, store) -> models / methods
-> training -> metrics / protocols -> experiments (configs, reports) -> inference (bundle, service).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("emobridge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
