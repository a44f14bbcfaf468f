"""The Python recognizer: predict, predict_many, timelines (fixed windows, Silero VAD),
statistics, the default model."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from emobridge.errors import AudioError, ConfigError, EmobridgeError
from emobridge.inference.recognizer import DEFAULT_MODEL_ENV, MIN_DOMAIN_FILES
from emobridge.inference.segment import fixed_segments, vad_segments
from tests.conftest import voiced_tone
from tests.inference_fixtures import CLASSES, build_tiny_bundle, shared_tiny_bundle, tone


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    return shared_tiny_bundle(tmp_path_factory)


def speech_like(seconds: float = 6.0, rate: int = 16_000) -> tuple[np.ndarray, list]:
    """Gliding harmonic 'syllables' at 3.5 Hz in two bursts (1-2.5 s, 3.5-5 s): what
    Silero VAD takes for speech; silence (faint noise) elsewhere."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(140 + 40 * np.sin(2 * np.pi * 0.7 * t)) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = np.abs(np.sin(2 * np.pi * 3.5 * t)) * (np.sin(2 * np.pi * 3.5 * t) > 0)
    bursts = [(1.0, 2.5), (3.5, 5.0)]
    gate = np.zeros_like(t, dtype=bool)
    for a, b in bursts:
        gate |= (t > a) & (t < b)
    noise = 0.001 * np.random.default_rng(0).standard_normal(t.size)
    return (0.3 * wave / np.abs(wave).max() * env * gate + noise).astype(np.float32), bursts


def test_import_and_predict_path_and_wave(tiny_bundle, tmp_path):
    from emobridge import Recognizer

    rec = Recognizer.load(tiny_bundle)
    assert rec.classes == CLASSES
    by_path = rec.predict(tone(tmp_path / "a.wav", "sadness"))
    assert by_path.label in CLASSES and by_path.label == max(
        by_path.probabilities, key=by_path.probabilities.get)
    assert sum(by_path.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert by_path.duration_s == pytest.approx(0.5, abs=1e-3)
    # the same audio as a 44.1-kHz stereo array: resampled, same answer
    wave = voiced_tone(0.5, 95.0, 16_000, seed=0)
    import soxr

    stereo = np.stack([soxr.resample(wave, 16_000, 44_100)] * 2, axis=1)
    by_wave = rec.predict((stereo, 44_100))
    assert by_wave.label == by_path.label and by_wave.source == "waveform"
    with pytest.raises(AudioError, match="silent"):
        rec.predict((np.zeros(8000, np.float32), 16_000))


def test_predict_many_table_and_errors(tiny_bundle, tmp_path):
    from emobridge import Recognizer

    rec = Recognizer.load(tiny_bundle)
    paths = [tone(tmp_path / f"{e}.wav", e) for e in CLASSES]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....not audio")
    table = rec.predict_many(paths, stats="bundle")
    assert list(table.columns) == ["path", "duration_s", "emotion",
                                   *[f"p_{c}" for c in CLASSES], "stats", "adaptation"]
    assert table["path"].tolist() == [str(p) for p in paths]
    assert set(table["stats"]) == {"bundle"}
    with pytest.raises(AudioError, match="bad.wav"):
        rec.predict_many([*paths, bad])
    skipped = rec.predict_many([bad, *paths], skip_errors=True)
    assert len(skipped) == 4 and list(skipped.attrs["errors"]) == [str(bad)]


def test_domain_statistics(tmp_path):
    from emobridge import Recognizer

    rec = Recognizer.load(build_tiny_bundle(tmp_path / "pc", normalise="per_corpus"))
    paths = [tone(tmp_path / f"{i}.wav", CLASSES[i % 4], seed=i)
             for i in range(MIN_DOMAIN_FILES)]
    auto = rec.predict_many(paths)  # per-corpus model, a folder: the folder's statistics
    assert set(auto["stats"]) == {f"domain ({MIN_DOMAIN_FILES} files)"}
    bundle = rec.predict_many(paths, stats="bundle")
    assert set(bundle["stats"]) == {"bundle"}
    assert not np.allclose(auto["p_anger"], bundle["p_anger"])
    with pytest.raises(EmobridgeError, match="at least"):
        rec.predict_many(paths[:3], stats="domain")
    # one file: the bundle's pooled statistics, not the file's own
    one = rec.predict(paths[0])
    assert one.stats == "bundle"
    assert one.probabilities["anger"] == pytest.approx(bundle["p_anger"].iloc[0], abs=1e-6)


def test_fixed_segments_cover_the_signal():
    assert fixed_segments(16_000, 16_000, 3, 1) == [(0, 16_000)]
    spans = fixed_segments(int(7.5 * 16_000), 16_000, 3, 1)
    assert spans[0] == (0, 48_000) and spans[-1] == (72_000, 120_000)
    assert all(b - a == 48_000 for a, b in spans)
    with pytest.raises(ConfigError, match="> 0"):
        fixed_segments(100, 16_000, 0, 1)


def test_timeline_fixed_and_vad(tiny_bundle, tmp_path):
    from emobridge import Recognizer

    rec = Recognizer.load(tiny_bundle)
    path = tone(tmp_path / "long.wav", "neutral", duration_s=6.0)
    table = rec.timeline(path, segment="fixed", window_s=2.0, hop_s=1.0)
    assert table[["start_s", "end_s"]].values.tolist() == [
        [0, 2], [1, 3], [2, 4], [3, 5], [4, 6]]
    assert set(table["emotion"]) <= set(CLASSES)
    wave, bursts = speech_like()
    spans = vad_segments(wave, 16_000)
    assert spans, "Silero VAD found no speech in the speech-like bursts"
    for a, b in spans:  # every region lies in a burst (with the VAD's padding)
        assert any(lo - 0.2 <= a / 16_000 and b / 16_000 <= hi + 0.2 for lo, hi in bursts)
    assert vad_segments(np.zeros(32_000, np.float32), 16_000) == []
    sf.write(tmp_path / "speech.wav", wave, 16_000)
    vad = rec.timeline(tmp_path / "speech.wav", segment="vad")
    assert len(vad) == len(spans) and (vad["start_s"] >= 0.8).all()


def test_default_model(tmp_path, monkeypatch, tiny_bundle):
    from emobridge import Recognizer

    monkeypatch.setenv(DEFAULT_MODEL_ENV, str(tmp_path / "none"))
    with pytest.raises(EmobridgeError, match="build_default_model.py"):
        Recognizer.default()
    monkeypatch.setenv(DEFAULT_MODEL_ENV, str(tiny_bundle))
    assert Recognizer.default().card["intended_use"] == "tests only"


def test_the_recognizer_extracts_on_its_device(tiny_bundle):
    from emobridge import Recognizer
    from emobridge.inference.bundle import load_bundle

    assert Recognizer.load(tiny_bundle).extractor.device == "cpu"
    # built lazily, so a CUDA name can be checked without a GPU
    assert Recognizer(load_bundle(tiny_bundle), device="cuda:0").extractor.device == "cuda:0"
