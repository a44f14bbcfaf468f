"""Built-in extractors; importing this package registers them.

``logmel`` (log-mel spectrograms, NNPM / BYOL-S presets, image form), ``opensmile``
(eGeMAPS / ComParE / emobase), ``hf`` (HuBERT, wav2vec 2.0, XLS-R, WavLM via transformers)
and ``whisper`` (the Whisper encoder, when its module is present). Heavy dependencies
(opensmile, transformers, ctranslate2) are imported only when an extractor is used.
"""

import importlib

from emobridge.features.extractors import hf_encoder, logmel, opensmile

try:  # written in parallel; a missing module must not break the other extractors
    whisper = importlib.import_module("emobridge.features.extractors.whisper")
except ModuleNotFoundError as exc:
    if exc.name != "emobridge.features.extractors.whisper":
        raise
    whisper = None

__all__ = ["hf_encoder", "logmel", "opensmile", "whisper"]
