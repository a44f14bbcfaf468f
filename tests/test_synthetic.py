"""The synthetic corpus: deterministic, emotions and languages measurably different."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from emobridge.corpora import get_reader, read_manifest
from emobridge.errors import ConfigError
from emobridge.synthetic import (
    MANIFEST_NAME,
    generate_corpus,
    load_or_generate,
    make_voice,
    synthesize_utterance,
)


def _f0_hz(wave: np.ndarray, sr: int = 16_000) -> float:
    """Median autocorrelation pitch over loud 40 ms frames."""
    frame, hop = int(0.04 * sr), int(0.02 * sr)
    lo, hi = sr // 500, sr // 60
    peak_rms = max(np.sqrt(np.mean(wave[s:s + frame] ** 2))
                   for s in range(0, len(wave) - frame, hop))
    out = []
    for s in range(0, len(wave) - frame, hop):
        x = wave[s:s + frame] - wave[s:s + frame].mean()
        if np.sqrt(np.mean(x**2)) < 0.3 * peak_rms:
            continue
        ac = np.correlate(x, x, "full")[frame - 1:]
        out.append(sr / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(out))


def _centroid_hz(wave: np.ndarray, sr: int = 16_000) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    freqs = np.fft.rfftfreq(len(wave), 1 / sr)
    return float((spectrum * freqs).sum() / spectrum.sum())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("synth")
    manifest = generate_corpus(out, languages=("aa", "bb"), speakers_per_language=2,
                               utterances_per_speaker_per_emotion=2, seed=3)
    return out, manifest


def test_layout_and_manifest(corpus) -> None:
    out, manifest = corpus
    assert len(manifest) == 2 * 2 * 4 * 2
    assert set(manifest["language"]) == {"aa", "bb"}
    assert set(manifest["emotion"]) == {"anger", "happiness", "neutral", "sadness"}
    assert manifest["speaker"].nunique() == 4
    assert set(manifest["gender"]) == {"f", "m"}
    assert read_manifest(out / MANIFEST_NAME)["path"].tolist() == manifest["path"].tolist()
    for path, rate, dur in zip(manifest["path"], manifest["sample_rate"],
                               manifest["duration_s"], strict=True):
        info = sf.info(path)
        assert info.samplerate == rate == 16_000
        assert info.frames / rate == pytest.approx(dur)
        assert 0.5 < dur < 4.0
    # The folder reader reads one language folder with the same speakers and labels.
    scan = get_reader("folder")(out / "aa", language="aa").scan(strict=True)
    aa = manifest[manifest["language"] == "aa"]
    assert len(scan.manifest) == len(aa)
    assert sorted(s.split(":")[1] for s in scan.manifest["speaker"].unique()) == \
        sorted(s.split(":")[1] for s in aa["speaker"].unique())
    assert sorted(scan.manifest["emotion"]) == sorted(aa["emotion"])


def test_deterministic_with_seed(tmp_path: Path, corpus) -> None:
    out, manifest = corpus
    again = generate_corpus(tmp_path / "again", speakers_per_language=2,
                            utterances_per_speaker_per_emotion=2, seed=3)
    for a, b in zip(manifest["path"], again["path"], strict=True):
        assert Path(a).read_bytes() == Path(b).read_bytes()
    other = generate_corpus(tmp_path / "other", languages=("aa",), speakers_per_language=1,
                            utterances_per_speaker_per_emotion=1, seed=4)
    first = manifest[manifest["path"].str.endswith("aa-f01_anger_01.wav")]["path"].iloc[0]
    second = other[other["path"].str.endswith("aa-f01_anger_01.wav")]["path"].iloc[0]
    assert Path(first).read_bytes() != Path(second).read_bytes()


def test_emotions_differ_in_pitch_and_energy() -> None:
    rng = np.random.default_rng(0)
    f0: dict[str, list[float]] = {}
    rms: dict[str, list[float]] = {}
    for gender in ("f", "m"):
        voice = make_voice(f"aa-{gender}", "aa", gender, rng)
        for emotion in ("anger", "happiness", "neutral", "sadness"):
            for _ in range(4):
                wave = synthesize_utterance(voice, emotion, rng)
                f0.setdefault(emotion, []).append(_f0_hz(wave))
                rms.setdefault(emotion, []).append(float(np.sqrt(np.mean(wave**2))))
    pitch = {e: np.mean(v) for e, v in f0.items()}
    energy = {e: np.mean(v) for e, v in rms.items()}
    assert pitch["happiness"] > pitch["neutral"] * 1.2
    assert pitch["anger"] > pitch["neutral"] * 1.1
    assert pitch["sadness"] < pitch["neutral"]
    assert energy["anger"] > energy["neutral"] * 1.5
    assert energy["sadness"] < energy["neutral"] / 1.5


def test_languages_differ_in_spectral_centroid() -> None:
    rng = np.random.default_rng(1)
    centroids: dict[str, list[float]] = {"aa": [], "bb": []}
    for language in centroids:
        for gender in ("f", "m"):
            voice = make_voice(f"{language}-{gender}", language, gender, rng)
            for emotion in ("anger", "neutral", "sadness"):
                for _ in range(2):
                    centroids[language].append(
                        _centroid_hz(synthesize_utterance(voice, emotion, rng)))
    aa, bb = np.array(centroids["aa"]), np.array(centroids["bb"])
    assert bb.mean() > aa.mean() * 1.25
    assert bb.min() > np.median(aa)


def test_load_or_generate_reuses_and_regenerates(tmp_path: Path) -> None:
    out = tmp_path / "c"
    first = load_or_generate(out, languages=["aa"], speakers_per_language=2,
                             utterances_per_speaker_per_emotion=1, seed=0)
    stamp = Path(first["path"].iloc[0]).stat().st_mtime_ns
    again = load_or_generate(out, languages=["aa"], speakers_per_language=2,
                             utterances_per_speaker_per_emotion=1, seed=0)
    assert again["path"].tolist() == first["path"].tolist()
    assert Path(first["path"].iloc[0]).stat().st_mtime_ns == stamp  # not rewritten
    smaller = load_or_generate(out, languages=["aa"], speakers_per_language=1,
                               utterances_per_speaker_per_emotion=1, seed=0)
    assert len(smaller) == len(first) // 2
    # Files of the old, bigger corpus are gone, so a folder scan agrees with the manifest.
    assert sorted(str(p) for p in out.glob("*/*/*.wav")) == sorted(smaller["path"])
    with pytest.raises(ConfigError, match="unknown option"):
        load_or_generate(out, speakers=3)


@pytest.mark.parametrize("kwargs, message", [
    ({"languages": ("aa", "aa")}, "distinct"),
    ({"speakers_per_language": 0}, ">= 1"),
    ({"emotions": ("anger", "contempt")}, "no prosody model for emotion 'contempt'"),
])
def test_bad_arguments(tmp_path: Path, kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        generate_corpus(tmp_path, **kwargs)
