"""Audio decoding and preparation: mono float32 at a target rate, crop / pad, silence trimming,
level normalisation.

Decoding uses libsndfile (soundfile), which recognises the container from the file's
header, so AIFF data behind a ``.wav`` name and other corpus quirks decode correctly.
Resampling uses soxr (high quality).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import soxr

from emobridge.errors import AudioError, ConfigError
from emobridge.fileio import check_regular_file

DEFAULT_SAMPLE_RATE_HZ = 16_000
#: Peak amplitude below which a file counts as silent.
SILENCE_PEAK = 1e-5
#: Sample rates accepted from a file header or for a waveform (Hz). Outside this range a
#: header is absurd: 1 Hz audio resampled to 16 kHz grows 16,000-fold in memory.
MIN_SAMPLE_RATE_HZ = 1_000
MAX_SAMPLE_RATE_HZ = 384_000
#: Most channels accepted (a larger count is a corrupt header or a transposed array).
MAX_CHANNELS = 64
#: Longest audio accepted by default, in seconds (3 hours; an emotion corpus's utterances
#: last seconds). :func:`load_audio` and :func:`audio_info` take ``max_duration_s`` to override.
MAX_DURATION_S = 3 * 3600.0


def _read_info(path: Path) -> sf._SoundFileInfo:
    try:
        check_regular_file(path)
        return sf.info(str(path))
    except OSError as exc:
        raise AudioError(f"{path}: cannot read audio header ({exc.strerror or exc})") from None
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"{path}: cannot read audio header ({exc})") from None


def _check_rate(rate: float, source: str) -> None:
    if not MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ:
        raise AudioError(f"{source}: sample rate {rate:g} Hz is outside "
                         f"{MIN_SAMPLE_RATE_HZ}..{MAX_SAMPLE_RATE_HZ} Hz")


def _check_header(path: Path, info: sf._SoundFileInfo, max_duration_s: float | None) -> float:
    """Refuse absurd headers before anything is decoded; return the duration in seconds."""
    _check_rate(info.samplerate, str(path))
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise AudioError(f"{path}: {info.channels} channels in the header "
                         f"(at most {MAX_CHANNELS} accepted)")
    if info.frames <= 0:
        raise AudioError(f"{path}: audio is empty (0 samples)")
    limit = MAX_DURATION_S if max_duration_s is None else max_duration_s
    duration_s = info.frames / info.samplerate
    if duration_s > limit:
        raise AudioError(f"{path}: duration {duration_s:.1f} s is longer than the limit of "
                         f"{limit:g} s (max_duration_s)")
    return duration_s


def load_audio(
    path: str | os.PathLike[str],
    sample_rate_hz: int | None = DEFAULT_SAMPLE_RATE_HZ,
    *,
    allow_silent: bool = False,
    max_duration_s: float | None = None,
) -> np.ndarray:
    """Load ``path`` as a mono float32 waveform at ``sample_rate_hz``.

    Channels are averaged. ``sample_rate_hz=None`` keeps the file's rate. The header is
    checked first (sample rate within :data:`MIN_SAMPLE_RATE_HZ`..:data:`MAX_SAMPLE_RATE_HZ`,
    1..:data:`MAX_CHANNELS` channels, at least one frame, at most ``max_duration_s`` seconds,
    default :data:`MAX_DURATION_S`), so an absurd header costs no decoding or resampling.
    Raises :class:`AudioError` naming the file when a check fails, the file cannot be
    decoded, holds NaN or infinite samples, or (unless ``allow_silent``) is silent.
    """
    path = Path(path)
    info = _read_info(path)
    _check_header(path, info, max_duration_s)
    try:
        wave, file_rate = sf.read(str(path), frames=info.frames, dtype="float32",
                                  always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"{path}: cannot decode audio ({exc})") from None
    return prepare_waveform(wave, file_rate, sample_rate_hz, source=str(path),
                            allow_silent=allow_silent)


def prepare_waveform(
    wave: np.ndarray,
    sample_rate_hz: int,
    target_rate_hz: int | None = DEFAULT_SAMPLE_RATE_HZ,
    *,
    source: str = "waveform",
    allow_silent: bool = False,
) -> np.ndarray:
    """Turn an array (samples, or samples x channels) into mono float32 at ``target_rate_hz``.

    Raises :class:`AudioError` naming ``source`` for an empty, non-finite, silent (unless
    ``allow_silent``) or oddly shaped array or a sample rate outside the accepted range, and
    :class:`ConfigError` for a target rate outside it.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:
        if wave.shape[1] > MAX_CHANNELS:
            raise AudioError(f"{source}: {wave.shape[1]} channels (at most {MAX_CHANNELS}; "
                             f"expected samples x channels, got shape {wave.shape})")
        wave = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    elif wave.ndim != 1:
        raise AudioError(f"{source}: expected 1-D or 2-D audio, got shape {wave.shape}")
    if wave.size == 0:
        raise AudioError(f"{source}: audio is empty (0 samples)")
    if not np.all(np.isfinite(wave)):
        raise AudioError(f"{source}: audio contains NaN or infinite samples")
    if not allow_silent and float(np.max(np.abs(wave))) < SILENCE_PEAK:
        raise AudioError(f"{source}: audio is silent (peak < {SILENCE_PEAK:g})")
    if target_rate_hz is not None and sample_rate_hz != target_rate_hz:
        _check_rate(sample_rate_hz, source)
        if not MIN_SAMPLE_RATE_HZ <= target_rate_hz <= MAX_SAMPLE_RATE_HZ:
            raise ConfigError(f"target sample rate {target_rate_hz:g} Hz is outside "
                              f"{MIN_SAMPLE_RATE_HZ}..{MAX_SAMPLE_RATE_HZ} Hz")
        wave = soxr.resample(wave, sample_rate_hz, target_rate_hz, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(wave, dtype=np.float32)


def audio_info(path: str | os.PathLike[str],
               max_duration_s: float | None = None) -> tuple[float, int]:
    """Return ``(duration_s, sample_rate_hz)`` from the header, without decoding samples.

    The header passes the same checks as in :func:`load_audio` (:class:`AudioError` naming
    the file otherwise), so a corpus scan reports absurd files as problems.
    """
    path = Path(path)
    info = _read_info(path)
    duration_s = _check_header(path, info, max_duration_s)
    return duration_s, int(info.samplerate)


def crop_or_pad(
    wave: np.ndarray,
    n_samples: int,
    mode: Literal["centre", "random", "start"] = "centre",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Crop or zero-pad ``wave`` to exactly ``n_samples``.

    Longer input is cropped at the centre, at a random offset (``rng`` required for
    reproducibility) or from the start; shorter input is zero-padded at the end.
    """
    if n_samples <= 0:
        raise ConfigError(f"n_samples must be positive, got {n_samples}")
    n = wave.shape[-1]
    if n == n_samples:
        return wave
    if n < n_samples:
        pad = [(0, 0)] * (wave.ndim - 1) + [(0, n_samples - n)]
        return np.pad(wave, pad)
    if mode == "centre":
        start = (n - n_samples) // 2
    elif mode == "random":
        if rng is None:
            raise ConfigError("mode='random' needs an rng (numpy Generator) for reproducibility")
        start = int(rng.integers(0, n - n_samples + 1))
    elif mode == "start":
        start = 0
    else:
        raise ConfigError(f"mode must be 'centre', 'random' or 'start', got {mode!r}")
    return wave[..., start : start + n_samples]


def normalise(wave: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Per-utterance mean-variance normalisation (zero mean, unit variance)."""
    wave = wave.astype(np.float32, copy=False)
    return ((wave - wave.mean()) / (wave.std() + eps)).astype(np.float32)


def trim_silence(
    wave: np.ndarray,
    sample_rate_hz: int,
    top_db: float = 35.0,
    frame_length_s: float = 0.025,
    hop_length_s: float = 0.010,
) -> np.ndarray:
    """Cut leading and trailing frames more than ``top_db`` dB below the loudest frame.

    Only the ends are cut (pauses inside the utterance stay), with speech-sized frames (25 ms
    every 10 ms) and a tighter default threshold than librosa's: acted-emotion corpora differ
    a lot in how much silence surrounds each utterance (RAVDESS about half of every file,
    EMO-DB little), and frame-level models otherwise learn the silence share. A waveform whose
    frames are all within ``top_db`` comes back unchanged.

    The same computation as ``librosa.effects.trim`` (written out in numpy; librosa is not a
    dependency, the tests check the indices equal librosa's): the frame RMS, frames centred
    on ``t * hop`` (zero padding of half a frame at both ends), in dB re the loudest frame
    (``amin = 1e-5``; for several channels, the loudest channel of each frame); the result
    runs from sample ``first * hop`` to ``min(n, (last + 1) * hop)`` for the first and the last
    frame above ``-top_db``. An empty waveform comes back unchanged.
    """
    if not top_db > 0:
        raise ConfigError(f"top_db must be > 0, got {top_db}")
    frame = max(1, int(round(frame_length_s * sample_rate_hz)))
    hop = max(1, int(round(hop_length_s * sample_rate_hz)))
    start, end = _nonsilent_interval(np.asarray(wave), top_db, frame, hop)
    return wave[..., start:end]


def _nonsilent_interval(wave: np.ndarray, top_db: float, frame: int, hop: int
                        ) -> tuple[int, int]:
    """``(start, end)`` sample indices of ``librosa.effects.trim(wave, top_db=top_db,
    frame_length=frame, hop_length=hop)``, the same operations in the same order."""
    n = wave.shape[-1] if wave.ndim else 0
    if n == 0:
        return 0, 0
    pad = [(0, 0)] * (wave.ndim - 1) + [(frame // 2, frame // 2)]
    padded = np.pad(wave, pad)  # n >= 1 samples: at least one whole frame
    # (..., frame, n_frames) strided view, as librosa.util.frame lays it out
    frames = np.moveaxis(np.lib.stride_tricks.sliding_window_view(padded, frame, axis=-1),
                         -1, -2)[..., ::hop]
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float32), axis=-2))
    amin = 1e-10  # librosa's amplitude_to_db: amin 1e-5 on amplitudes, squared
    db = 10.0 * np.log10(np.maximum(amin, np.square(rms)))
    db -= 10.0 * np.log10(np.maximum(amin, np.square(np.max(rms))))
    if db.ndim > 1:  # several channels: the loudest one decides
        db = db.reshape(-1, db.shape[-1]).max(axis=0)
    loud = np.flatnonzero(db > -top_db)
    if loud.size == 0:  # only without a finite loudest frame (NaN samples)
        return 0, 0
    return int(loud[0]) * hop, min(n, (int(loud[-1]) + 1) * hop)


LevelMode = Literal["none", "rms", "peak"]


def normalise_level(wave: np.ndarray, mode: LevelMode = "rms", target_dbfs: float = -20.0,
                    eps: float = 1e-8) -> np.ndarray:
    """Scale ``wave`` so its RMS (``mode="rms"``) or peak (``"peak"``) is ``target_dbfs`` dB
    re full scale (``"none"``: unchanged).

    Corpora are post-processed differently: EMO-DB files are each peak-normalised, RAVDESS
    and EMOVO keep the recording level. A model trained on one learns "loud = angry" from
    level differences that another corpus does not have (in EMO-DB, peak normalisation makes
    sad speech 3 dB *louder* in RMS than angry speech). Normalising the level of every
    utterance removes that shortcut; spectral shape and temporal dynamics stay.
    """
    if mode == "none":
        return wave
    wave = np.asarray(wave, dtype=np.float32)
    if mode == "rms":
        level = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    elif mode == "peak":
        level = float(np.max(np.abs(wave))) if wave.size else 0.0
    else:
        raise ConfigError(f"level mode must be 'none', 'rms' or 'peak', got {mode!r}")
    gain = 10.0 ** (target_dbfs / 20.0) / max(level, eps)
    return (wave * gain).astype(np.float32)


def file_hash(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """BLAKE2b-128 hex digest of a file's bytes: the audio's identity in the feature store."""
    h = hashlib.blake2b(digest_size=16)
    with open(check_regular_file(path), "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()
