"""Built-in extractors; importing this package registers them.

``logmel`` (log-mel spectrograms, NNPM / BYOL-S presets, image form), ``opensmile``
(eGeMAPS / ComParE / emobase), ``hf`` (HuBERT, wav2vec 2.0, XLS-R, WavLM via transformers)
and ``whisper`` (the Whisper encoder). Heavy dependencies (opensmile, transformers,
ctranslate2) are imported only when an extractor is used.
"""

from emobridge.features.extractors import hf_encoder, logmel, opensmile, speaker, whisper

__all__ = ["hf_encoder", "logmel", "opensmile", "speaker", "whisper"]
