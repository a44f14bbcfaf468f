"""Log-mel spectrograms (torch STFT + the mel filterbank of :mod:`emobridge.features.mel`,
equal to librosa's), with the papers' presets.

Presets (every value can be overridden by a parameter of the same name):

``nnpm`` (Li, Yan, Wang, NNPM, section 3.2)
    16 kHz, utterances unified to 7.5 s (zero-padded at the end / cropped), Hann window of
    400 samples, FFT of 512, hop of 160, mel scale. The paper leaves the number of mel bands,
    the mel formula, the crop position and the log open. Chosen: ``n_mels=128`` with the
    Slaney mel scale and Slaney area normalisation over 0-8 kHz. 128 is the default of
    librosa's ``melspectrogram`` (the usual tool of the SNSA line of work) and keeps the
    spectral detail a 2-layer CNN front end can use; with the Slaney scale (linear below
    1 kHz) every one of the 128 triangles still covers at least one of the 257 FFT bins,
    whereas the HTK formula would leave the lowest band empty at this FFT size. Long
    utterances are cropped at the centre (``crop="centre"``, emotional speech rarely starts or
    ends mid-phrase). Log: natural log of the power mel spectrogram plus ``log_offset=1e-6``.

``byols`` (Agarla et al., the BYOL-S front end)
    64 mel bands over 60-7800 Hz (HTK mel formula, no area normalisation, as in BYOL-A/BYOL-S
    which use torchaudio's defaults), 64 ms window (1024 samples at 16 kHz, FFT 1024), 10 ms
    hop (160), natural log with the float32 machine epsilon as offset, variable length, and
    per-utterance normalisation (subtract the mean, divide by the standard deviation of all
    values of the spectrogram: ``normalise="utterance"``).

Mel filterbank: triangles between ``n_mels + 2`` points equally spaced on the mel scale, as in
HTK / Slaney's Auditory Toolbox. HTK: ``mel = 2595 log10(1 + f / 700)``. Slaney: linear
below 1 kHz (``f / (200/3)``), logarithmic above (``15 + 27 ln(f / 1000) / ln 6.4``).
``mel_norm="slaney"`` scales each triangle to unit area (``2 / bandwidth``).

STFT: periodic Hann window of ``win_length_samples`` centred in ``n_fft``; with ``center=True``
the signal is padded by ``n_fft // 2`` on both sides (reflection, or zeros for waveforms too
short to reflect), so a waveform of ``n`` samples gives ``1 + n // hop`` frames. Batches are
zero-padded after that per-waveform padding, so batched and single extraction agree (to
float32 rounding of the matrix product).

Cross-corpus options (off in both presets, which follow the papers): ``trim_db`` cuts leading
and trailing silence (:func:`emobridge.audio.trim_silence`) and ``level="rms"`` scales every
utterance to the same RMS (:func:`emobridge.audio.normalise_level`) before the STFT (and
before ``fixed_duration_s``). Both matter across corpora: EMO-DB files are peak-normalised
while RAVDESS keeps the recording level (angry RAVDESS speech is 16 dB louder than sad
speech; in EMO-DB sad speech is 3 dB louder than angry), and RAVDESS files are about half
silence. An SNSA trained on raw RAVDESS log-mel learns loudness and scores below chance on
EMO-DB; see ``benchmarks/RESULTS.md``. ``benchmarks/bench_adaptation.py`` uses
``trim_db=35,level=rms``.

Output: ``(frames, n_mels)`` float32. Images for ImageNet CNNs (the VGG16 of Baklouti et
al.) are made in one place, the ``vgg`` backbone (:func:`emobridge.models.vgg.
frames_to_images`), from these frames: a training batch holds frame matrices. The
extractor's former image form (``image_size``) is refused with a line saying so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from emobridge.audio import crop_or_pad, normalise_level, trim_silence
from emobridge.errors import FeatureError
from emobridge.features.base import Extractor
from emobridge.features.extractors._common import as_mono_float32, check_choice, resolve_device
from emobridge.features.mel import (  # hz_to_mel, mel_to_hz: re-exported
    hz_to_mel,  # noqa: F401
    mel_filterbank,
    mel_to_hz,  # noqa: F401
)
from emobridge.features.registry import register_extractor

PRESETS: dict[str, dict[str, Any]] = {
    "nnpm": {
        "sample_rate_hz": 16_000,
        "fixed_duration_s": 7.5,
        "crop": "centre",
        "n_fft": 512,
        "win_length_samples": 400,
        "hop_length_samples": 160,
        "window": "hann",
        "center": True,
        "n_mels": 128,
        "f_min_hz": 0.0,
        "f_max_hz": None,
        "mel_scale": "slaney",
        "mel_norm": "slaney",
        "power": 2.0,
        "log_offset": 1e-6,
        "normalise": "none",
        "image_size": None,
        "trim_db": None,
        "level": "none",
    },
    "byols": {
        "sample_rate_hz": 16_000,
        "fixed_duration_s": None,
        "crop": "centre",
        "n_fft": 1024,
        "win_length_samples": 1024,
        "hop_length_samples": 160,
        "window": "hann",
        "center": True,
        "n_mels": 64,
        "f_min_hz": 60.0,
        "f_max_hz": 7800.0,
        "mel_scale": "htk",
        "mel_norm": None,
        "power": 2.0,
        "log_offset": float(np.finfo(np.float32).eps),
        "normalise": "utterance",
        "image_size": None,
        "trim_db": None,
        "level": "none",
    },
}
#: Waveform preparation options that enter :meth:`LogMel.params` (and so the feature id) only
#: when switched on: feature stores written before they existed stay valid.
_OFF_BY_DEFAULT = {"trim_db": None, "level": "none"}

_UNSET: Any = object()
#: Utterances per STFT call inside :meth:`LogMel.extract_batch` (bounds memory).
_CHUNK = 32


@register_extractor
class LogMel(Extractor):
    """Log-mel spectrogram ``(frames, n_mels)``, or a ``(3, H, W)`` image with ``image_size``.

    Parameters
    ----------
    preset:
        ``"nnpm"`` (default) or ``"byols"``; see the module docstring for the values and
        the choices made where the papers are silent. Any other parameter overrides it.
    sample_rate_hz:
        Rate the audio is resampled to.
    fixed_duration_s:
        Zero-pad / crop every waveform to this duration; ``None`` keeps the length.
    crop:
        Where long waveforms are cropped: ``"centre"`` or ``"start"``.
    n_fft, win_length_samples, hop_length_samples:
        STFT size, Hann window length (``<= n_fft``, centred in it) and hop, in samples.
    window:
        ``"hann"`` (periodic) or ``"hamming"`` (periodic).
    center:
        Pad ``n_fft // 2`` on both sides so frame ``t`` is centred on sample ``t * hop``.
    n_mels, f_min_hz, f_max_hz:
        Mel bands and their frequency range (``f_max_hz=None``: Nyquist).
    mel_scale, mel_norm:
        ``"slaney"`` / ``"htk"`` formula; ``"slaney"`` (unit-area) or ``None`` weighting.
    power:
        1.0 for the magnitude, 2.0 for the power spectrogram.
    log_offset:
        Added before the natural log (avoids ``log 0`` on digital silence).
    normalise:
        ``"none"``, ``"utterance"`` (one mean / std over the whole spectrogram) or ``"bin"``
        (mean / std per mel band over the frames).
    image_size:
        Refused unless ``None``: images are made by the ``vgg`` backbone (kept as a
        parameter, always ``None``, so the ids of existing stores do not change).
    trim_db:
        Cut leading / trailing audio more than this many dB below the loudest 25-ms frame
        (:func:`~emobridge.audio.trim_silence`); ``None`` keeps it.
    level:
        ``"none"``, ``"rms"`` or ``"peak"``: scale each waveform to -20 dBFS RMS / peak
        (:func:`~emobridge.audio.normalise_level`, after trimming) so the features do not
        depend on the recording level.
    device:
        ``"cpu"`` or ``"cuda"``; where the STFT runs (not part of :attr:`id`).
    """

    name = "logmel"

    def __init__(
        self,
        preset: str = "nnpm",
        *,
        sample_rate_hz: int = _UNSET,
        fixed_duration_s: float | None = _UNSET,
        crop: str = _UNSET,
        n_fft: int = _UNSET,
        win_length_samples: int = _UNSET,
        hop_length_samples: int = _UNSET,
        window: str = _UNSET,
        center: bool = _UNSET,
        n_mels: int = _UNSET,
        f_min_hz: float = _UNSET,
        f_max_hz: float | None = _UNSET,
        mel_scale: str = _UNSET,
        mel_norm: str | None = _UNSET,
        power: float = _UNSET,
        log_offset: float = _UNSET,
        normalise: str = _UNSET,
        image_size: int | Sequence[int] | None = _UNSET,
        trim_db: float | None = _UNSET,
        level: str = _UNSET,
        device: str = "cpu",
    ) -> None:
        args = dict(locals())
        if preset not in PRESETS:
            raise FeatureError(f"logmel: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        self.preset = preset
        given = {k: v for k, v in args.items() if k in PRESETS[preset] and v is not _UNSET}
        values = {**PRESETS[preset], **given}
        for key, value in values.items():
            setattr(self, key, value)
        self.device = device
        self._validate()
        self._fb_cache: dict[str, Any] = {}

    def _validate(self) -> None:
        def positive_int(param: str) -> int:
            value = getattr(self, param)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
                raise FeatureError(f"logmel: {param} must be a positive integer, got {value!r}")
            return int(value)

        def positive_number(param: str, unit: str = "") -> float:
            value = getattr(self, param)
            if isinstance(value, bool) or not isinstance(
                    value, int | float | np.integer | np.floating) or not value > 0:
                raise FeatureError(f"logmel: {param} must be a positive number{unit}, "
                                   f"got {value!r}")
            return float(value)

        for param in ("sample_rate_hz", "n_fft", "win_length_samples", "hop_length_samples",
                      "n_mels"):
            setattr(self, param, positive_int(param))
        if self.win_length_samples > self.n_fft:
            raise FeatureError(f"logmel: win_length_samples ({self.win_length_samples}) must "
                               f"not exceed n_fft ({self.n_fft})")
        if self.fixed_duration_s is not None:  # kept as given: it is part of the id
            positive_number("fixed_duration_s", " of seconds or null")
        check_choice("logmel", "crop", self.crop, ("centre", "start"))
        check_choice("logmel", "window", self.window, ("hann", "hamming"))
        check_choice("logmel", "center", self.center, (True, False))
        check_choice("logmel", "mel_scale", self.mel_scale, ("slaney", "htk"))
        check_choice("logmel", "mel_norm", self.mel_norm, ("slaney", None))
        check_choice("logmel", "power", float(self.power), (1.0, 2.0))
        check_choice("logmel", "normalise", self.normalise, ("none", "utterance", "bin"))
        check_choice("logmel", "level", self.level, ("none", "rms", "peak"))
        if self.trim_db is not None:
            self.trim_db = positive_number("trim_db", " of dB or null")
        self.power = float(self.power)
        self.f_min_hz = float(self.f_min_hz)
        self.f_max_hz = None if self.f_max_hz is None else float(self.f_max_hz)
        self.log_offset = positive_number("log_offset")
        if self.image_size is not None:
            raise FeatureError("logmel: image_size is no longer an extractor option; the vgg "
                               "backbone makes the image from log-mel frames: use "
                               "logmel:preset=nnpm with method mmd and backbone_params "
                               "{image_size: N}")
        # Builds the filterbank now so a bad frequency range fails at construction.
        self.filterbank_ = mel_filterbank(self.sample_rate_hz, self.n_fft, self.n_mels,
                                          self.f_min_hz, self.f_max_hz, self.mel_scale,
                                          self.mel_norm)

    @property
    def output(self) -> Literal["frames", "vector"]:
        """``"frames"``: ``(frames, n_mels)``."""
        return "frames"

    def params(self) -> dict[str, Any]:
        """The resolved settings (preset plus overrides): equal settings give equal ids."""
        return {key: getattr(self, key) for key in PRESETS["nnpm"]
                if not (key in _OFF_BY_DEFAULT and getattr(self, key) == _OFF_BY_DEFAULT[key])}

    def extract(self, wave: np.ndarray, sample_rate_hz: int) -> np.ndarray:
        return self.extract_batch([wave], sample_rate_hz)[0]

    def extract_batch(self, waves: Sequence[np.ndarray], sample_rate_hz: int) -> list[np.ndarray]:
        """Log-mel of several waveforms, padded into batches of similar length."""
        prepared = [self._prepare(w, sample_rate_hz) for w in waves]
        order = np.argsort([w.size for w, _ in prepared], kind="stable")
        out: list[np.ndarray | None] = [None] * len(prepared)
        for start in range(0, len(order), _CHUNK):
            idx = order[start:start + _CHUNK]
            for i, feats in zip(idx, self._compute([prepared[i] for i in idx]), strict=True):
                out[i] = feats
        return out  # type: ignore[return-value]

    # -- internals -------------------------------------------------------------------------

    def _prepare(self, wave: np.ndarray, sample_rate_hz: int) -> tuple[np.ndarray, int]:
        """STFT input (padded, trailing zeros trimmed) and the number of output frames."""
        wave = as_mono_float32(wave, sample_rate_hz, self.sample_rate_hz, "logmel")
        if self.trim_db is not None:
            wave = trim_silence(wave, self.sample_rate_hz, self.trim_db)
        wave = normalise_level(wave, self.level)
        n_signal = wave.size
        if self.fixed_duration_s is not None:
            n = int(round(float(self.fixed_duration_s) * self.sample_rate_hz))
            wave = crop_or_pad(wave, n, mode=self.crop)
            n_signal = min(n_signal, n)
        end = n_signal  # samples after `end` are zeros (the fixed-length padding)
        if self.center:
            pad = self.n_fft // 2
            mode = "reflect" if wave.size > pad else "constant"
            # the right reflection mirrors zeros only if more than `pad` zeros were added
            end = pad + n_signal if wave.size - n_signal > pad else wave.size + 2 * pad
            wave = np.pad(wave, pad, mode=mode)
        elif wave.size < self.n_fft:
            wave = np.pad(wave, (0, self.n_fft - wave.size))
        n_frames = 1 + (wave.size - self.n_fft) // self.hop_length_samples
        # Frames lying wholly in trailing zeros (the 7.5 s padding) are exactly log(offset):
        # compute only the frames that touch signal.
        active = min(n_frames, max(1, -(-end // self.hop_length_samples)))
        return wave[: (active - 1) * self.hop_length_samples + self.n_fft], n_frames

    def _constants(self) -> tuple[Any, Any]:
        import torch

        key = str(self.device)
        if key not in self._fb_cache:
            device = resolve_device("logmel", self.device)
            maker = torch.hann_window if self.window == "hann" else torch.hamming_window
            window = maker(self.win_length_samples, periodic=True, dtype=torch.float32)
            self._fb_cache[key] = (window.to(device),
                                   torch.from_numpy(self.filterbank_).to(device))
        return self._fb_cache[key]

    def _compute(self, items: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
        import torch

        window, fb = self._constants()
        lengths = [w.size for w, _ in items]
        batch = np.zeros((len(items), max(lengths)), dtype=np.float32)
        for row, (w, _) in zip(batch, items, strict=True):
            row[: w.size] = w
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(window.device)
            spec = torch.stft(x, self.n_fft, hop_length=self.hop_length_samples,
                              win_length=self.win_length_samples, window=window, center=False,
                              return_complex=True)
            parts = torch.view_as_real(spec)
            mag = parts[..., 0].square()  # |z|^2 without extra full-size temporaries
            mag.addcmul_(parts[..., 1], parts[..., 1])
            if self.power == 1.0:
                mag.sqrt_()
            logmel = torch.log(torch.matmul(fb, mag) + self.log_offset)  # (B, mels, T)
            logmel = logmel.transpose(1, 2).contiguous().cpu().numpy()
            floor = float(torch.log(torch.zeros(1) + self.log_offset))  # what zeros give
        out = []
        for i, (n, (_, n_frames)) in enumerate(zip(lengths, items, strict=True)):
            active = 1 + (n - self.n_fft) // self.hop_length_samples
            frames = np.empty((n_frames, self.n_mels), dtype=np.float32)
            frames[:active] = logmel[i, :active]
            frames[active:] = floor
            out.append(self._finish(frames))
        return out

    def _finish(self, frames: np.ndarray) -> np.ndarray:
        if self.normalise == "utterance":
            frames = (frames - frames.mean()) / (frames.std() + 1e-8)
        elif self.normalise == "bin":
            frames = (frames - frames.mean(axis=0)) / (frames.std(axis=0) + 1e-8)
        return np.ascontiguousarray(frames, dtype=np.float32)
