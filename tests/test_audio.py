from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emobridge.audio import crop_or_pad, file_hash, load_audio, normalise
from emobridge.errors import AudioError
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
    with pytest.raises(ValueError, match="rng"):
        crop_or_pad(x, 4, "random")


def test_normalise_and_hash(tmp_path: Path) -> None:
    y = normalise(np.array([1.0, 2.0, 3.0, 4.0]))
    assert abs(y.mean()) < 1e-6 and abs(y.std() - 1) < 1e-4
    a = write_tone(tmp_path / "a.wav", seed=1)
    b = write_tone(tmp_path / "b.wav", seed=1)
    c = write_tone(tmp_path / "c.wav", seed=2)
    assert file_hash(a) == file_hash(b) != file_hash(c)
