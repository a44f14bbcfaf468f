"""Mel scale, triangular mel filterbank and power spectrogram in numpy (librosa-equal).

One helper per job for every mel front end of the package: the ``logmel`` extractor
(:mod:`emobridge.features.extractors.logmel`), Whisper's log-mel
(:class:`emobridge.models.whisper_encoder.WhisperLogMel`) and the GE2E speaker encoder
(:mod:`emobridge.models.speaker_encoder`). Written out rather than imported from librosa, which
pulls numba and llvmlite (about 210 MB installed, about a second of import); the tests check
every function equals librosa's (``hz_to_mel``, ``mel_to_hz``, ``filters.mel``,
``feature.melspectrogram``).

Mel scales: HTK ``mel = 2595 log10(1 + f / 700)``; Slaney (Auditory Toolbox) linear below
1 kHz (``f / (200/3)``), logarithmic above (``15 + 27 ln(f / 1000) / ln 6.4``).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from emobridge.errors import FeatureError

MelScale = Literal["htk", "slaney"]

_F_SP = 200.0 / 3  # Slaney: Hz per mel in the linear part
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel(freq_hz: np.ndarray | float, scale: MelScale = "slaney") -> np.ndarray:
    """Frequency (Hz) to mel with the HTK or the Slaney formula (``librosa.hz_to_mel``)."""
    f = np.asarray(freq_hz, dtype=np.float64)
    if scale == "htk":
        return np.asarray(2595.0 * np.log10(1.0 + f / 700.0))
    log_part = _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOG_STEP
    return np.asarray(np.where(f >= _MIN_LOG_HZ, log_part, f / _F_SP))


def mel_to_hz(mel: np.ndarray | float, scale: MelScale = "slaney") -> np.ndarray:
    """Inverse of :func:`hz_to_mel` (``librosa.mel_to_hz``)."""
    m = np.asarray(mel, dtype=np.float64)
    if scale == "htk":
        return np.asarray(700.0 * (10.0 ** (m / 2595.0) - 1.0))
    log_part = _MIN_LOG_HZ * np.exp(_LOG_STEP * (np.maximum(m, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.asarray(np.where(m >= _MIN_LOG_MEL, log_part, _F_SP * m))


def mel_filterbank(
    sample_rate_hz: int,
    n_fft: int,
    n_mels: int,
    f_min_hz: float = 0.0,
    f_max_hz: float | None = None,
    scale: MelScale = "slaney",
    norm: Literal["slaney"] | None = "slaney",
) -> np.ndarray:
    """Triangular mel filterbank, ``(n_mels, n_fft // 2 + 1)`` float32 (``librosa.filters.mel``).

    Band ``i`` rises linearly from mel point ``i`` to ``i + 1`` and falls to ``i + 2`` (points
    equally spaced in mel between ``f_min_hz`` and ``f_max_hz``, default Nyquist); weights are
    evaluated at the FFT bin centre frequencies. ``norm="slaney"`` divides each band by half
    its width in Hz (unit area); ``None`` keeps peak 1. Same operations in the same order as
    librosa (float64 triangles stored as float32, then scaled), so the values are identical.
    """
    f_max_hz = sample_rate_hz / 2.0 if f_max_hz is None else float(f_max_hz)
    if not 0.0 <= f_min_hz < f_max_hz <= sample_rate_hz / 2.0:
        raise FeatureError(f"mel filterbank: need 0 <= f_min_hz < f_max_hz <= "
                           f"{sample_rate_hz / 2:g}, got {f_min_hz}, {f_max_hz}")
    if norm not in ("slaney", None):
        raise FeatureError(f"mel filterbank: norm must be 'slaney' or None, got {norm!r}")
    if scale not in ("htk", "slaney"):
        raise FeatureError(f"mel filterbank: scale must be 'htk' or 'slaney', got {scale!r}")
    if n_mels < 1 or n_fft < 1:
        raise FeatureError(f"mel filterbank: need n_mels >= 1 and n_fft >= 1, got {n_mels}, "
                           f"{n_fft}")
    fft_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate_hz)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min_hz, scale), hz_to_mel(f_max_hz, scale),
                                  n_mels + 2), scale)
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, fft_hz)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(rising, falling)).astype(np.float32)
    if norm == "slaney":
        weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights


def power_spectrogram(wave: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """``(n_fft // 2 + 1, frames)`` float32 power spectrogram of a 1-D waveform, as librosa's
    ``stft`` with its defaults makes it (``melspectrogram``'s input).

    Periodic Hann window of ``n_fft`` samples, frames centred on ``t * hop_length`` (the
    waveform zero-padded by ``n_fft // 2`` on both sides: ``1 + n // hop_length`` frames),
    FFT in float64, complex values stored at the input's precision (complex64 for float32
    input, as librosa does) before ``|X|^2``.
    """
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise FeatureError(f"power spectrogram: need a 1-D waveform, got shape {wave.shape}")
    if not np.issubdtype(wave.dtype, np.floating):
        wave = wave.astype(np.float32)
    pad = n_fft // 2
    padded = np.pad(wave, (pad, pad))
    if padded.size < n_fft:
        raise FeatureError(f"power spectrogram: {wave.size} samples are too few for "
                           f"n_fft={n_fft}")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    complex_dtype = np.complex64 if wave.dtype == np.float32 else np.complex128
    spec = np.fft.rfft(frames * window, axis=-1).astype(complex_dtype)
    power = np.square(spec.real) + np.square(spec.imag)
    return np.ascontiguousarray(power.T, dtype=np.float32)
