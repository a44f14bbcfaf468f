"""The numpy mel scale, mel filterbank, power spectrogram and silence trim equal librosa's.

librosa is no longer a dependency of the package (it pulls numba and llvmlite); it is in the
``dev`` extra so these tests keep checking the numpy versions against it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from emobridge.audio import _nonsilent_interval, trim_silence
from emobridge.errors import FeatureError
from emobridge.features.mel import hz_to_mel, mel_filterbank, mel_to_hz, power_spectrogram
from emobridge.models import speaker_encoder as se
from emobridge.models.whisper_encoder import mel_filter_bank
from tests.conftest import voiced_tone

librosa = pytest.importorskip("librosa")

SR = 16_000


@pytest.mark.parametrize(("sr", "n_fft", "n_mels", "f_min", "f_max", "scale", "norm"), [
    (16_000, 512, 128, 0.0, None, "slaney", "slaney"),  # logmel nnpm
    (16_000, 1024, 64, 60.0, 7800.0, "htk", None),  # logmel byols
    (16_000, 400, 40, 0.0, None, "slaney", "slaney"),  # GE2E
    (16_000, 400, 80, 0.0, None, "slaney", "slaney"),  # Whisper
    (16_000, 400, 128, 0.0, 8000.0, "slaney", "slaney"),  # Whisper large-v3
    (22_050, 2048, 128, 0.0, None, "slaney", "slaney"),  # librosa's defaults
    (8_000, 255, 20, 100.0, 3500.0, "htk", "slaney"),  # odd FFT size
    (44_100, 1023, 96, 30.0, 16_000.0, "slaney", None),
])
def test_filterbank_equals_librosa(sr, n_fft, n_mels, f_min, f_max, scale, norm) -> None:
    ours = mel_filterbank(sr, n_fft, n_mels, f_min, f_max, scale, norm)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max,
                              htk=scale == "htk", norm=norm)
    assert ours.shape == ref.shape == (n_mels, n_fft // 2 + 1) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)


def test_whisper_filters_are_the_shared_filterbank() -> None:
    np.testing.assert_array_equal(mel_filter_bank(80), mel_filterbank(SR, 400, 80))


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_mel_scale_equals_librosa(scale) -> None:
    freqs = np.array([0.0, 20.0, 999.999, 1000.0, 1000.001, 4321.0, 8000.0, 22_050.0])
    htk = scale == "htk"
    np.testing.assert_allclose(hz_to_mel(freqs, scale), librosa.hz_to_mel(freqs, htk=htk),
                               rtol=1e-12)
    mels = librosa.hz_to_mel(freqs, htk=htk)
    np.testing.assert_allclose(mel_to_hz(mels, scale), librosa.mel_to_hz(mels, htk=htk),
                               rtol=1e-12)
    for f in (440.0, 2500.0):  # scalars as well as arrays
        assert float(hz_to_mel(f, scale)) == pytest.approx(float(librosa.hz_to_mel(f, htk=htk)))


def test_filterbank_checks_its_arguments() -> None:
    with pytest.raises(FeatureError, match="f_max_hz"):
        mel_filterbank(SR, 512, 64, 0.0, 9000.0)
    with pytest.raises(FeatureError, match="norm"):
        mel_filterbank(SR, 512, 64, norm="l2")  # type: ignore[arg-type]
    with pytest.raises(FeatureError, match="scale"):
        mel_filterbank(SR, 512, 64, scale="mel")  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore:n_fft=400 is too large")  # librosa, for n = 1
@pytest.mark.parametrize("n", [1, 401, 8_000, 12_345])
def test_power_spectrogram_and_ge2e_mel_equal_librosa(n) -> None:
    wave = voiced_tone(1.0, seed=n)[:n]
    ref = np.abs(librosa.stft(wave, n_fft=400, hop_length=160)) ** 2
    ours = power_spectrogram(wave, 400, 160)
    assert ours.shape == ref.shape == (201, 1 + n // 160) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6 * ref.max())
    mel_ref = librosa.feature.melspectrogram(y=wave, sr=SR, n_fft=400, hop_length=160,
                                             n_mels=40)
    mel = mel_filterbank(SR, 400, 40) @ ours
    np.testing.assert_allclose(mel, mel_ref, rtol=1e-4, atol=1e-6 * mel_ref.max())


def test_speaker_encoder_partials_equal_librosa_melspectrogram() -> None:
    wave = se.preprocess(voiced_tone(3.3, 220.0, seed=3))
    partials = se.mel_partials(wave)
    slices = se.partial_slices(len(wave))
    padded = np.pad(wave, (0, max(0, slices[-1].stop * se.HOP_SAMPLES - len(wave))))
    mel = librosa.feature.melspectrogram(y=padded, sr=SR, n_fft=400, hop_length=160,
                                         n_mels=40).T
    ref = np.stack([mel[s] for s in slices])
    assert partials.shape == ref.shape and partials.dtype == np.float32
    np.testing.assert_allclose(partials, ref, rtol=1e-4, atol=1e-6 * ref.max())


def _trim_fixtures() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    tone = voiced_tone(1.0)
    zeros = np.zeros
    fixtures = {
        "silence_only": zeros(SR, np.float32),
        "tone_with_silent_ends": np.concatenate([zeros(4_000, np.float32), tone,
                                                 zeros(7_777, np.float32)]),
        "tone_with_noise_ends": np.concatenate([1e-4 * rng.standard_normal(5_000), tone,
                                                1e-3 * rng.standard_normal(3_001)]
                                               ).astype(np.float32),
        "pause_inside": np.concatenate([zeros(2_000), tone, zeros(5_000), tone, zeros(999)]
                                       ).astype(np.float32),
        "float64": np.concatenate([zeros(1_234), tone.astype(np.float64), zeros(99)]),
        "short": tone[:100],
        "one_sample": tone[5:6],
        "stereo": np.stack([np.concatenate([zeros(3_000), tone]),
                            np.concatenate([tone, zeros(3_000)])]).astype(np.float32),
        "fade_in": (np.linspace(0, 1, 20_000) ** 6 * np.sin(np.arange(20_000))
                    ).astype(np.float32),
    }
    for i in range(40):  # random lengths, envelopes and gaps
        n = int(rng.integers(1, 30_000))
        env = np.exp(rng.uniform(-12, 0) * rng.random(n))
        gate = rng.random(n) > rng.random()
        fixtures[f"random_{i}"] = (env * gate * rng.standard_normal(n)).astype(np.float32)
    return fixtures


@pytest.mark.parametrize("top_db", [20.0, 35.0, 60.0])
def test_trim_equals_librosa(top_db) -> None:
    for name, wave in _trim_fixtures().items():
        ref, (start, end) = librosa.effects.trim(wave, top_db=top_db, frame_length=400,
                                                 hop_length=160)
        out = trim_silence(wave, SR, top_db=top_db)
        assert out.shape == ref.shape, name
        np.testing.assert_array_equal(out, ref, err_msg=name)
        for frame, hop in ((2048, 512), (401, 97), (1, 1)):
            got = _nonsilent_interval(wave, top_db, frame, hop)
            _, want = librosa.effects.trim(wave, top_db=top_db, frame_length=frame,
                                           hop_length=hop)
            assert got == tuple(int(v) for v in want), (name, frame, hop)


def test_trim_of_silence_and_of_nothing() -> None:
    silence = np.zeros(SR, np.float32)
    assert trim_silence(silence, SR).size == SR  # every frame is as loud as the loudest
    assert trim_silence(np.zeros(0, np.float32), SR).size == 0  # librosa raises here


def test_nothing_imports_librosa_or_numba() -> None:
    # With librosa and numba unimportable, the CLI imports and the trim, the log-mel
    # extractor (trim_db), Whisper's and GE2E's mel front ends all run.
    code = (
        "import sys\n"
        "sys.modules['librosa'] = None; sys.modules['numba'] = None\n"
        "import numpy as np\n"
        "import emobridge.cli\n"
        "from emobridge.audio import trim_silence\n"
        "from emobridge.features import build_extractor\n"
        "from emobridge.models import speaker_encoder as se\n"
        "from emobridge.models.whisper_encoder import WhisperLogMel\n"
        "w = np.concatenate([np.zeros(4000), np.sin(np.arange(16000) * 0.1), np.zeros(4000)])\n"
        "w = w.astype(np.float32)\n"
        "assert trim_silence(w, 16000).size < w.size\n"
        "build_extractor('logmel:trim_db=35').extract(w, 16000)\n"
        "assert se.mel_partials(se.preprocess(w)).shape[1:] == (160, 40)\n"
        "WhisperLogMel(80)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    # and a plain `import emobridge.cli` loads neither
    probe = ("import sys, emobridge.cli; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('librosa', 'numba')))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
