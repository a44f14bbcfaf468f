"""Splitting long recordings into segments: fixed windows or Silero VAD speech regions.

Segments are ``(start, end)`` sample indices into the waveform. Silero VAD (the
``silero-vad`` package, MIT) ships its model inside the package and runs offline; it is
imported only when ``segment="vad"`` is asked for.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any, Literal

import numpy as np

from emobridge.errors import ConfigError, EmobridgeError

__all__ = ["SegmentMode", "fixed_segments", "segment_wave", "vad_segments"]

SegmentMode = Literal["fixed", "vad"]

#: Rate Silero VAD runs at (it also takes 8 kHz; 16 kHz is what emobridge decodes to).
VAD_RATE_HZ = 16_000

_VAD_LOCK = threading.Lock()
_VAD_MODEL: Any = None


def fixed_segments(n_samples: int, sample_rate_hz: int, window_s: float = 3.0,
                   hop_s: float = 1.0) -> list[tuple[int, int]]:
    """Windows of ``window_s`` every ``hop_s`` seconds covering the whole signal; the last
    window is aligned to the end (so the tail is never dropped); a signal shorter than one
    window is one segment."""
    if not window_s > 0 or not hop_s > 0:
        raise ConfigError(f"segment window and hop must be > 0 s, got window={window_s!r}, "
                          f"hop={hop_s!r}")
    win = max(1, int(round(window_s * sample_rate_hz)))
    hop = max(1, int(round(hop_s * sample_rate_hz)))
    if n_samples <= win:
        return [(0, n_samples)]
    starts = list(range(0, n_samples - win + 1, hop))
    if starts[-1] + win < n_samples:
        starts.append(n_samples - win)
    return [(s, s + win) for s in starts]


def _vad_model() -> Any:
    global _VAD_MODEL
    with _VAD_LOCK:
        if _VAD_MODEL is None:
            try:
                from silero_vad import load_silero_vad
            except ImportError:
                raise EmobridgeError("segment='vad' needs the silero-vad package "
                                     "(pip install 'emobridge[service]' or silero-vad)"
                                     ) from None
            with warnings.catch_warnings():  # its loader's own deprecation notices
                warnings.simplefilter("ignore", DeprecationWarning)
                _VAD_MODEL = load_silero_vad()
        return _VAD_MODEL


def vad_segments(wave: np.ndarray, sample_rate_hz: int, *, threshold: float = 0.5,
                 min_speech_s: float = 0.25, min_silence_s: float = 0.3,
                 max_segment_s: float = 10.0, pad_s: float = 0.05) -> list[tuple[int, int]]:
    """Speech regions found by Silero VAD, each at most ``max_segment_s`` long (longer
    speech is split). ``wave`` must be at 16 kHz (what :func:`emobridge.audio.load_audio`
    returns by default). No speech: an empty list."""
    import torch

    if sample_rate_hz != VAD_RATE_HZ:
        raise ConfigError(f"VAD runs on {VAD_RATE_HZ} Hz audio, got {sample_rate_hz} Hz")
    from silero_vad import get_speech_timestamps

    model = _vad_model()
    with _VAD_LOCK, torch.no_grad():  # the JIT model keeps state: one caller at a time
        stamps = get_speech_timestamps(
            torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), model,
            threshold=threshold, sampling_rate=VAD_RATE_HZ,
            min_speech_duration_ms=int(min_speech_s * 1000),
            min_silence_duration_ms=int(min_silence_s * 1000),
            max_speech_duration_s=max_segment_s, speech_pad_ms=int(pad_s * 1000))
        model.reset_states()
    return [(int(s["start"]), int(s["end"])) for s in stamps if s["end"] > s["start"]]


def segment_wave(wave: np.ndarray, sample_rate_hz: int, mode: SegmentMode = "fixed",
                 window_s: float = 3.0, hop_s: float = 1.0) -> list[tuple[int, int]]:
    """Segments of ``wave`` by ``mode`` (``"fixed"``: :func:`fixed_segments`; ``"vad"``:
    :func:`vad_segments`, regions at most ``max(window_s, 10)`` s long)."""
    if mode == "fixed":
        return fixed_segments(len(wave), sample_rate_hz, window_s, hop_s)
    if mode == "vad":
        return vad_segments(wave, sample_rate_hz, max_segment_s=max(window_s, 10.0))
    raise ConfigError(f"segment must be 'fixed' or 'vad', got {mode!r}")
