from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emobridge.audio import (
    crop_or_pad,
    file_hash,
    load_audio,
    normalise,
    normalise_level,
    trim_silence,
)
from emobridge.errors import AudioError, ConfigError
from tests.conftest import write_tone


def test_load_resamples_stereo_to_mono(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "a.wav", duration_s=1.0, sample_rate_hz=44_100, channels=2)
    wave = load_audio(path, 16_000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.size - 16_000) <= 2


def test_aiff_behind_wav_name_decodes(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "fake.wav", sample_rate_hz=16_000, fmt="AIFF")
    assert sf.info(str(path)).format == "AIFF"
    assert load_audio(path).size == 8_000


def test_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....not audio")
    with pytest.raises(AudioError, match="broken.wav"):
        load_audio(bad)
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(1600, dtype=np.float32), 16_000)
    with pytest.raises(AudioError, match="silent"):
        load_audio(silent)
    assert load_audio(silent, allow_silent=True).size == 1600
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.float32), 16_000)
    with pytest.raises(AudioError, match="empty"):
        load_audio(empty)


def test_crop_or_pad_modes() -> None:
    x = np.arange(10, dtype=np.float32)
    assert crop_or_pad(x, 4, "centre").tolist() == [3, 4, 5, 6]
    assert crop_or_pad(x, 4, "start").tolist() == [0, 1, 2, 3]
    padded = crop_or_pad(x, 12)
    assert padded.shape == (12,) and padded[-2:].tolist() == [0, 0]
    a = crop_or_pad(x, 4, "random", np.random.default_rng(3))
    b = crop_or_pad(x, 4, "random", np.random.default_rng(3))
    assert a.tolist() == b.tolist() and a[1] - a[0] == 1
    with pytest.raises(ConfigError, match="rng"):
        crop_or_pad(x, 4, "random")


def test_normalise_and_hash(tmp_path: Path) -> None:
    y = normalise(np.array([1.0, 2.0, 3.0, 4.0]))
    assert abs(y.mean()) < 1e-6 and abs(y.std() - 1) < 1e-4
    a = write_tone(tmp_path / "a.wav", seed=1)
    b = write_tone(tmp_path / "b.wav", seed=1)
    c = write_tone(tmp_path / "c.wav", seed=2)
    assert file_hash(a) == file_hash(b) != file_hash(c)


def test_trim_silence_cuts_only_the_ends() -> None:
    rng = np.random.default_rng(0)
    sr = 16_000
    speech = (0.3 * np.sin(2 * np.pi * 200 * np.arange(sr // 2) / sr)).astype(np.float32)
    quiet = (1e-4 * rng.standard_normal(sr // 2)).astype(np.float32)  # -80 dB re speech
    wave = np.concatenate([quiet, speech, quiet, speech, quiet])
    out = trim_silence(wave, sr, top_db=35)
    # the inner pause stays; the outer ones go (to within one 25-ms frame at each end)
    assert 3 * sr // 2 <= out.size <= 3 * sr // 2 + 2 * 0.025 * sr
    edge = int(0.03 * sr)  # one frame plus a hop: speech is reached within it at both ends
    assert np.abs(out[:edge]).max() > 0.1 and np.abs(out[-edge:]).max() > 0.1
    # a threshold wider than the dynamic range keeps everything
    assert trim_silence(wave, sr, top_db=120).size == wave.size
    np.testing.assert_array_equal(trim_silence(speech, sr), speech)
    with pytest.raises(ConfigError, match="top_db"):
        trim_silence(wave, sr, top_db=0)


def test_normalise_level_removes_the_gain() -> None:
    wave = np.sin(np.linspace(0, 100, 8000)).astype(np.float32)
    for gain in (0.01, 1.0, 5.0):
        rms = normalise_level(gain * wave, "rms")
        assert np.sqrt(np.mean(rms.astype(np.float64) ** 2)) == pytest.approx(0.1, rel=1e-4)
        peak = normalise_level(gain * wave, "peak", target_dbfs=0.0)
        assert np.abs(peak).max() == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_array_equal(normalise_level(wave, "none"), wave)
    assert np.all(normalise_level(np.zeros(10, np.float32), "rms") == 0)  # no NaN on silence
    with pytest.raises(ConfigError, match="level mode"):
        normalise_level(wave, "loud")  # type: ignore[arg-type]
