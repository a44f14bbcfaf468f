"""Issue 18 item 5: absurd audio headers are refused before decoding or resampling."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emobridge import audio
from emobridge.audio import (
    audio_info,
    crop_or_pad,
    load_audio,
    normalise_level,
    prepare_waveform,
    trim_silence,
)
from emobridge.errors import AudioError, ConfigError, EmobridgeError
from tests.conftest import voiced_tone, write_tone


def _patch_wav_rate(path: Path, rate: int) -> None:
    """Rewrite the sample rate (and byte rate) in a canonical WAV header in place."""
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"fmt "
    channels, bits = struct.unpack_from("<H", data, 22)[0], struct.unpack_from("<H", data, 34)[0]
    struct.pack_into("<II", data, 24, rate, rate * channels * bits // 8)
    path.write_bytes(bytes(data))


def test_one_hz_header_is_refused_without_resampling(tmp_path: Path) -> None:
    # The reported case: a ~60 KB WAV whose header claims 1 Hz (30,000 s of audio).
    path = write_tone(tmp_path / "one_hz.wav", duration_s=30_000 / 16_000)
    _patch_wav_rate(path, 1)
    assert sf.info(str(path)).samplerate == 1 and path.stat().st_size < 70_000
    start = time.perf_counter()
    with pytest.raises(AudioError, match=r"one_hz\.wav: sample rate 1 Hz is outside 1000\.\."):
        load_audio(path)
    assert time.perf_counter() - start < 1.0
    with pytest.raises(AudioError, match=r"one_hz\.wav: sample rate 1 Hz"):
        audio_info(path)


def test_sf_write_at_one_hz_and_too_high_rates_are_refused(tmp_path: Path) -> None:
    low = tmp_path / "low.wav"
    sf.write(str(low), voiced_tone(0.1), 1)
    with pytest.raises(AudioError, match=r"low\.wav: sample rate 1 Hz"):
        load_audio(low)
    high = tmp_path / "high.wav"
    sf.write(str(high), voiced_tone(0.1), 400_000)
    with pytest.raises(AudioError, match=r"high\.wav: sample rate 400000 Hz"):
        load_audio(high, None)
    edge = write_tone(tmp_path / "edge.wav", duration_s=0.1, sample_rate_hz=1_000)
    assert load_audio(edge, 1_000).size == 100  # the bounds themselves are accepted


def test_duration_limit_is_configurable(tmp_path: Path, monkeypatch) -> None:
    path = write_tone(tmp_path / "long.wav", duration_s=1.0)
    assert load_audio(path).size == 16_000  # within the default limit
    with pytest.raises(AudioError, match=r"long\.wav: duration 1\.0 s is longer than .* 0\.5 s"):
        load_audio(path, max_duration_s=0.5)
    with pytest.raises(AudioError, match="duration"):
        audio_info(path, max_duration_s=0.5)
    assert audio.MAX_DURATION_S == 3 * 3600.0
    monkeypatch.setattr(audio, "MAX_DURATION_S", 0.5)  # the module default applies
    with pytest.raises(AudioError, match=r"limit of 0\.5 s"):
        load_audio(path)
    assert load_audio(path, max_duration_s=2.0).size == 16_000  # the parameter overrides it


def test_too_many_channels_zero_frames_and_nan(tmp_path: Path) -> None:
    many = tmp_path / "many.wav"
    sf.write(str(many), np.tile(voiced_tone(0.01)[:, None], (1, 65)), 16_000)
    with pytest.raises(AudioError, match=r"many\.wav: 65 channels"):
        load_audio(many)
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros((0, 2), dtype=np.float32), 16_000)
    with pytest.raises(AudioError, match=r"empty\.wav: audio is empty"):
        audio_info(empty)
    nan = tmp_path / "nan.wav"
    wave = voiced_tone(0.1)
    wave[10], wave[20] = np.nan, np.inf
    sf.write(str(nan), wave, 16_000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: audio contains NaN or infinite"):
        load_audio(nan)


def test_prepare_waveform_refuses_bad_arrays_and_rates() -> None:
    wave = voiced_tone(0.1)
    with pytest.raises(AudioError, match=r"clip: 1600 channels.*shape \(2, 1600\)"):
        prepare_waveform(np.stack([wave, wave]), 16_000, source="clip")  # (2, n): transposed
    with pytest.raises(AudioError, match="clip: sample rate 1 Hz"):
        prepare_waveform(wave, 1, source="clip")
    with pytest.raises(ConfigError, match="target sample rate 0 Hz is outside"):
        prepare_waveform(wave, 16_000, 0, source="clip")
    assert prepare_waveform(np.stack([wave, wave], axis=1), 16_000).size == wave.size


def test_scan_reports_an_absurd_header_as_a_problem(tmp_path: Path) -> None:
    from emobridge.corpora.base import create_reader

    root = tmp_path / "corpus"
    write_tone(root / "s1" / "angry" / "good.wav", duration_s=0.1)
    bad = write_tone(root / "s1" / "sad" / "bad.wav", duration_s=0.1)
    _patch_wav_rate(bad, 1)
    result = create_reader("folder", root, {"language": "de"}).scan()
    assert result.manifest["path"].tolist() == [str(root / "s1" / "angry" / "good.wav")]
    assert [p.path for p in result.problems] == [str(bad)]
    assert "sample rate 1 Hz" in result.problems[0].reason


@pytest.mark.parametrize("call", [
    lambda w: crop_or_pad(w, 0),
    lambda w: crop_or_pad(w, 4, "middle"),  # type: ignore[arg-type]
    lambda w: crop_or_pad(w, 4, "random"),
    lambda w: trim_silence(w, 16_000, top_db=-1),
    lambda w: normalise_level(w, "loud"),  # type: ignore[arg-type]
    lambda w: prepare_waveform(w, 16_000, -5),
])
def test_bad_settings_raise_config_errors_not_value_errors(call) -> None:
    # Issue 10 A6: the CLI's handler prints EmobridgeError as one line; ValueError escaped it.
    with pytest.raises(ConfigError) as info:
        call(voiced_tone(0.1))
    assert isinstance(info.value, EmobridgeError) and not isinstance(info.value, ValueError)
