"""Self-supervised speech encoders from Hugging Face ``transformers``: HuBERT, wav2vec 2.0,
XLS-R, WavLM (anything ``AutoModel`` loads that takes ``input_values``).

The model comes from a hub id (downloaded once by ``transformers`` into its cache) or a local
directory written by ``save_pretrained``. The waveform is prepared the way the model's
feature extractor says (``preprocessor_config.json``: zero-mean / unit-variance per
utterance when ``do_normalize``; attention masks when ``return_attention_mask``); without a
preprocessor config, waveforms are normalised and masks are used when the convolutional front
end uses layer norm (``feat_extract_norm == "layer"``), as for the large / XLS-R / WavLM
checkpoints.

Batching: models that take attention masks get length-sorted, zero-padded batches (valid
frames from the model's own output-length formula). Models trained without masks (group-norm
front end, e.g. wav2vec2-base, hubert-base) see padding as signal, so their utterances are
encoded one at a time: slower on a GPU, but identical to unbatched extraction.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from emobridge.errors import EmobridgeWarning, FeatureError
from emobridge.features.base import Extractor
from emobridge.features.extractors._common import as_mono_float32, check_choice, resolve_device
from emobridge.features.pooling import pool, select_layers
from emobridge.features.registry import register_extractor

#: Short names for common checkpoints (any hub id or local folder works as ``model=``).
MODEL_ALIASES: dict[str, str] = {
    "hubert-base": "facebook/hubert-base-ls960",
    "hubert-large": "facebook/hubert-large-ll60k",
    "wav2vec2-base": "facebook/wav2vec2-base",
    "wav2vec2-large": "facebook/wav2vec2-large-lv60",
    "xlsr-53": "facebook/wav2vec2-large-xlsr-53",
    "xls-r-300m": "facebook/wav2vec2-xls-r-300m",
    "wavlm-base-plus": "microsoft/wavlm-base-plus",
    "wavlm-large": "microsoft/wavlm-large",
}


def load_pretrained(loader: Any, name: str, revision: str | None = None) -> Any:
    """``loader.from_pretrained(name)`` without ``transformers``' load report: weights the
    checkpoint lacks (they start random) are named in one warning; weights it has beyond the
    model (a pre-training head read as a plain encoder) are expected and not reported.
    Returns ``(model, missing weight names)``."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = loader.from_pretrained(name, revision=revision, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        warnings.warn(f"{name}: {len(missing)} weights are not in the checkpoint and start "
                      f"random ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})",
                      EmobridgeWarning, stacklevel=2)
    return model, missing


@register_extractor
class HFEncoder(Extractor):
    """Hidden states of a ``transformers`` speech encoder, layer-selected and pooled.

    Parameters
    ----------
    model:
        Hub id (``"facebook/hubert-base-ls960"``), an alias of :data:`MODEL_ALIASES`, or a
        local directory (stored as an absolute path).
    layer:
        Hidden state to keep: an int (0 = the CNN features after projection, -1 = last
        transformer layer), a list (concatenated), ``"mean"`` (average of all) or ``"cnn"``
        (the convolutional front end's output before its projection, ``conv_dim[-1]`` wide:
        the input of ``deep_wccn`` with ``trainable_layers="all"``).
    pooling:
        ``"none"`` (``(frames, dims)``), ``"mean"`` or ``"meanstd"`` (vectors).
    normalise:
        ``"auto"`` (the feature extractor's ``do_normalize``), ``True`` or ``False``:
        zero-mean / unit-variance per utterance.
    max_duration_s:
        Longer utterances are cut into equal chunks of at most this length, encoded
        separately and their frames concatenated (bounds memory / attention cost);
        ``None`` encodes whole utterances.
    revision:
        Hub revision (branch, tag or commit) for reproducible downloads.
    sample_rate_hz:
        Rate the model expects (16 kHz for all of the above).
    device:
        ``"cpu"`` or ``"cuda"`` (not part of :attr:`id`).
    batch_size:
        Utterances per forward pass when masks are supported (not part of :attr:`id`).
    """

    name = "hf"

    def __init__(
        self,
        model: str = "facebook/hubert-base-ls960",
        layer: int | Sequence[int] | str = -1,
        pooling: str = "mean",
        normalise: bool | str = "auto",
        max_duration_s: float | None = None,
        revision: str | None = None,
        sample_rate_hz: int = 16_000,
        device: str = "cpu",
        batch_size: int = 8,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise FeatureError(f"hf: model must be a hub id or a folder, got {model!r}")
        model = MODEL_ALIASES.get(model, model)
        if os.path.isdir(model):
            model = str(Path(model).resolve())
        self.model = model
        if isinstance(layer, str):
            if layer not in ("mean", "cnn"):
                raise FeatureError(f"hf: layer must be an int, a list of ints, 'mean' or "
                                   f"'cnn', got {layer!r}")
        elif isinstance(layer, bool) or not (
                isinstance(layer, int) or (isinstance(layer, Sequence) and layer
                                           and all(isinstance(i, int) and not isinstance(i, bool)
                                                   for i in layer))):
            raise FeatureError(f"hf: layer must be an int, a list of ints, 'mean' or "
                               f"'cnn', got {layer!r}")
        self.layer = layer if isinstance(layer, int | str) else [int(i) for i in layer]
        check_choice("hf", "pooling", pooling, ("none", "mean", "meanstd"))
        self.pooling = pooling
        check_choice("hf", "normalise", normalise, ("auto", True, False))
        self.normalise = normalise
        if max_duration_s is not None and not float(max_duration_s) > 0:
            raise FeatureError(f"hf: max_duration_s must be > 0 or null, got {max_duration_s!r}")
        self.max_duration_s = None if max_duration_s is None else float(max_duration_s)
        self.revision = revision
        self.sample_rate_hz = int(sample_rate_hz)
        self.device = device
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise FeatureError(f"hf: batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self._loaded: dict[str, Any] | None = None

    @property
    def output(self) -> Literal["frames", "vector"]:
        return "frames" if self.pooling == "none" else "vector"

    def params(self) -> dict[str, Any]:
        return {"model": self.model, "layer": self.layer, "pooling": self.pooling,
                "normalise": self.normalise, "max_duration_s": self.max_duration_s,
                "revision": self.revision, "sample_rate_hz": self.sample_rate_hz}

    # -- model ---------------------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        """Load the model (once) and work out its input conventions."""
        if self._loaded is not None:
            return self._loaded
        try:
            import torch
            from transformers import AutoFeatureExtractor, AutoModel
        except ImportError:  # pragma: no cover - the extra is installed in CI
            raise FeatureError("hf extractor needs 'transformers' "
                               "(pip install 'emobridge[encoders]')") from None
        device = resolve_device("hf", self.device)
        try:
            model, _ = load_pretrained(AutoModel, self.model, self.revision)
        except (OSError, ValueError, KeyError) as exc:
            raise FeatureError(f"hf: cannot load model {self.model!r}: {exc}") from None
        model.eval().to(device)
        if not hasattr(model, "_get_feat_extract_output_lengths"):
            raise FeatureError(f"hf: {self.model!r} ({type(model).__name__}) is not a "
                               f"wav2vec2-style speech encoder (no conv feature extractor)")
        try:
            fe = AutoFeatureExtractor.from_pretrained(self.model, revision=self.revision)
        except (OSError, ValueError, KeyError):
            fe = None  # no preprocessor_config.json: fall back on the model config
        layer_norm_front = getattr(model.config, "feat_extract_norm", "layer") == "layer"
        fe_rate = getattr(fe, "sampling_rate", None)
        if fe_rate is not None and int(fe_rate) != self.sample_rate_hz:
            raise FeatureError(f"hf: {self.model!r} expects {fe_rate} Hz audio, "
                               f"sample_rate_hz is {self.sample_rate_hz}")
        do_norm = (bool(getattr(fe, "do_normalize", layer_norm_front))
                   if self.normalise == "auto" else bool(self.normalise))
        use_mask = bool(getattr(fe, "return_attention_mask", layer_norm_front))
        field = 1
        for k, s in zip(reversed(model.config.conv_kernel), reversed(model.config.conv_stride),
                        strict=True):
            field = (field - 1) * s + k
        self._loaded = {"torch": torch, "model": model, "device": device, "normalise": do_norm,
                        "mask": use_mask, "min_samples": field}
        return self._loaded

    # -- extraction ----------------------------------------------------------------------

    def extract(self, wave: np.ndarray, sample_rate_hz: int) -> np.ndarray:
        return self.extract_batch([wave], sample_rate_hz)[0]

    def extract_batch(self, waves: Sequence[np.ndarray], sample_rate_hz: int) -> list[np.ndarray]:
        """Encode several waveforms (batched where the model takes attention masks)."""
        state = self.load()
        pieces: list[tuple[int, np.ndarray]] = []  # (utterance index, chunk)
        for i, wave in enumerate(waves):
            wave = as_mono_float32(wave, sample_rate_hz, self.sample_rate_hz, "hf")
            if state["normalise"]:
                wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
            for chunk in self._chunks(wave):
                if chunk.size < state["min_samples"]:  # shorter than one output frame
                    chunk = np.pad(chunk, (0, state["min_samples"] - chunk.size))
                pieces.append((i, chunk.astype(np.float32)))
        order = sorted(range(len(pieces)), key=lambda p: pieces[p][1].size)
        step = self.batch_size if state["mask"] else 1
        encoded: list[list[np.ndarray] | None] = [None] * len(pieces)
        for start in range(0, len(order), step):
            idx = order[start:start + step]
            for p, layers in zip(idx, self._forward([pieces[p][1] for p in idx]), strict=True):
                encoded[p] = layers
        by_utt: list[list[list[np.ndarray]]] = [[] for _ in waves]
        for (i, _), layers in zip(pieces, encoded, strict=True):
            by_utt[i].append(layers)  # pieces are in time order within an utterance
        out = []
        for chunks in by_utt:
            per_layer = [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]
            layer = 0 if self.layer == "cnn" else self.layer  # the only state kept
            out.append(pool(select_layers(per_layer, layer), self.pooling))
        return out

    def _chunks(self, wave: np.ndarray) -> list[np.ndarray]:
        if self.max_duration_s is None:
            return [wave]
        limit = max(1, int(self.max_duration_s * self.sample_rate_hz))
        n = math.ceil(wave.size / limit)
        size = math.ceil(wave.size / n)  # equal chunks: no tiny tail
        return [wave[j:j + size] for j in range(0, wave.size, size)]

    def _forward(self, chunks: list[np.ndarray]) -> list[list[np.ndarray]]:
        """Per chunk, the list of hidden states ``(frames, dims)`` (input embedding first;
        only the front end's output for ``layer="cnn"``)."""
        state = self.load()
        torch, model = state["torch"], state["model"]
        lengths = [c.size for c in chunks]
        batch = np.zeros((len(chunks), max(lengths)), dtype=np.float32)
        mask = np.zeros_like(batch, dtype=np.int64)
        for row, c in enumerate(chunks):
            batch[row, : c.size] = c
            mask[row, : c.size] = 1
        kwargs: dict[str, Any] = {"input_values": torch.from_numpy(batch).to(state["device"])}
        if state["mask"]:
            kwargs["attention_mask"] = torch.from_numpy(mask).to(state["device"])
        with torch.inference_mode():
            if self.layer == "cnn":  # the front end takes no mask: padding is cut off below
                hidden = (model.feature_extractor(kwargs["input_values"]).transpose(1, 2),)
            else:
                hidden = model(**kwargs, output_hidden_states=True).hidden_states
            n_frames = model._get_feat_extract_output_lengths(torch.tensor(lengths)).tolist()
            stacked = torch.stack(hidden, dim=1).float().cpu().numpy()  # (B, L, T, D)
        return [[stacked[b, k, : int(n_frames[b])] for k in range(stacked.shape[1])]
                for b in range(len(chunks))]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loaded": None}
