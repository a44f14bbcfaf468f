"""Log-mel extractor: filterbank, presets, batching, parameter checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emobridge.audio import crop_or_pad
from emobridge.errors import FeatureError
from emobridge.features import build_extractor
from emobridge.features.extractors.logmel import (
    LogMel,
    hz_to_mel,
    mel_filterbank,
    mel_to_hz,
)
from tests.conftest import voiced_tone


def test_mel_formulas_known_values_and_inverse() -> None:
    assert float(hz_to_mel(700.0, "htk")) == pytest.approx(2595 * np.log10(2))
    assert float(hz_to_mel(1000.0, "slaney")) == pytest.approx(15.0)
    assert float(hz_to_mel(500.0, "slaney")) == pytest.approx(7.5)  # linear part
    freqs = np.array([0.0, 60.0, 999.0, 1000.0, 4321.0, 8000.0])
    for scale in ("htk", "slaney"):
        np.testing.assert_allclose(mel_to_hz(hz_to_mel(freqs, scale), scale), freqs, atol=1e-6)


@pytest.mark.parametrize(("n_fft", "n_mels", "f_min", "f_max", "scale", "norm"), [
    (512, 128, 0.0, 8000.0, "slaney", "slaney"),
    (1024, 64, 60.0, 7800.0, "htk", None),
    (400, 40, 20.0, 7600.0, "htk", "slaney"),
])
def test_filterbank_matches_transformers_reference(n_fft, n_mels, f_min, f_max, scale,
                                                   norm) -> None:
    audio_utils = pytest.importorskip("transformers.audio_utils")
    ours = mel_filterbank(16_000, n_fft, n_mels, f_min, f_max, scale, norm)
    ref = audio_utils.mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=f_min,
        max_frequency=f_max, sampling_rate=16_000, norm=norm, mel_scale=scale).T
    assert ours.shape == (n_mels, n_fft // 2 + 1)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_filterbank_triangles_peak_in_order_and_no_empty_band_in_nnpm() -> None:
    fb = mel_filterbank(16_000, 512, 128)
    assert (fb.max(axis=1) > 0).all()
    peaks = fb.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all() and peaks[-1] > peaks[0]
    with pytest.raises(FeatureError, match="f_max_hz"):
        mel_filterbank(16_000, 512, 64, 0.0, 9000.0)


def _reference_logmel(wave: np.ndarray, ext: LogMel) -> np.ndarray:
    """Straightforward computation: crop / pad, torch.stft(center=True), filterbank, log."""
    if ext.fixed_duration_s is not None:
        wave = crop_or_pad(wave, int(ext.fixed_duration_s * ext.sample_rate_hz), ext.crop)
    window = torch.hann_window(ext.win_length_samples)
    spec = torch.stft(torch.from_numpy(wave), ext.n_fft, ext.hop_length_samples,
                      ext.win_length_samples, window, center=True, pad_mode="reflect",
                      return_complex=True).abs() ** 2
    fb = torch.from_numpy(mel_filterbank(16_000, ext.n_fft, ext.n_mels, ext.f_min_hz,
                                         ext.f_max_hz, ext.mel_scale, ext.mel_norm))
    out = torch.log(fb @ spec + ext.log_offset).T.numpy()
    if ext.normalise == "utterance":
        out = (out - out.mean()) / (out.std() + 1e-8)
    return out


@pytest.mark.parametrize("duration_s", [1.0, 7.49, 9.0])
def test_nnpm_preset_fixed_length_and_values(duration_s: float) -> None:
    ext = build_extractor("logmel:preset=nnpm")
    wave = voiced_tone(duration_s)
    feats = ext.extract(wave, 16_000)
    # 7.5 s at hop 160 with centred frames: 1 + 120000 // 160 frames of 128 mel bands
    assert feats.shape == (751, 128) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, _reference_logmel(wave, ext), rtol=1e-4, atol=1e-3)
    if duration_s < 7.0:  # padded frames are digital silence: log(offset)
        assert np.allclose(feats[-50:], np.log(1e-6), atol=1e-4)


def test_byols_preset_variable_length_and_normalised() -> None:
    ext = build_extractor("logmel:preset=byols")
    assert (ext.n_mels, ext.n_fft, ext.win_length_samples, ext.hop_length_samples) == \
           (64, 1024, 1024, 160)
    assert (ext.f_min_hz, ext.f_max_hz) == (60.0, 7800.0)
    for duration_s in (0.5, 2.0):
        wave = voiced_tone(duration_s)
        feats = ext.extract(wave, 16_000)
        assert feats.shape == (1 + wave.size // 160, 64)
        assert abs(float(feats.mean())) < 1e-4 and float(feats.std()) == pytest.approx(1, 1e-3)
        np.testing.assert_allclose(feats, _reference_logmel(wave, ext), rtol=1e-3, atol=2e-3)


def test_tone_energy_lands_in_the_right_band() -> None:
    t = np.arange(16_000) / 16_000
    ext = LogMel("byols")
    for freq in (300.0, 2000.0):
        feats = LogMel("byols", normalise="none").extract(
            (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16_000)
        band = int(feats.mean(axis=0).argmax())
        centres = mel_to_hz(np.linspace(hz_to_mel(60.0, "htk"), hz_to_mel(7800.0, "htk"), 66),
                            "htk")[1:-1]
        assert abs(centres[band] - freq) < 0.1 * freq, (freq, centres[band])
    assert ext.output == "frames"


def test_batch_equals_single_for_mixed_lengths() -> None:
    rng = np.random.default_rng(0)
    waves = [voiced_tone(d, seed=i) for i, d in enumerate(rng.uniform(0.05, 3.0, 11))]
    waves.append(voiced_tone(8.0))  # longer than the nnpm length: cropped
    for spec in ("logmel", "logmel:preset=byols", "logmel:preset=byols,center=false"):
        ext = build_extractor(spec)
        batch = ext.extract_batch(waves, 16_000)
        for wave, got in zip(waves, batch, strict=True):
            np.testing.assert_allclose(got, ext.extract(wave, 16_000), rtol=1e-5, atol=1e-5)


def test_overrides_ids_and_spec_round_trip() -> None:
    base = build_extractor("logmel:preset=nnpm")
    small = build_extractor("logmel:preset=nnpm,n_mels=64")
    assert small.extract(voiced_tone(0.3), 16_000).shape == (751, 64)
    assert small.id != base.id
    # the same resolved settings give the same id, however they were spelled
    assert LogMel("byols", n_mels=128, f_min_hz=0.0).id == LogMel(
        "byols", n_mels=128, f_min_hz=0, f_max_hz=7800.0).id
    for ext in (base, small, LogMel("byols")):
        again = build_extractor(ext.spec())
        assert again.id == ext.id and again.params() == ext.params()
    assert LogMel("byols").params()["fixed_duration_s"] is None
    unbounded = build_extractor("logmel:fixed_duration_s=null")
    assert unbounded.extract(voiced_tone(1.0), 16_000).shape == (101, 128)
    assert LogMel(device="cpu").id == LogMel().id  # the device is not part of the id


def test_other_sample_rate_is_resampled() -> None:
    ext = LogMel("byols")
    wave16 = voiced_tone(1.0, sample_rate_hz=16_000)
    wave8 = voiced_tone(1.0, sample_rate_hz=8_000)
    assert ext.extract(wave8, 8_000).shape == ext.extract(wave16, 16_000).shape


def test_image_form_is_refused_with_where_images_are_made() -> None:
    with pytest.raises(FeatureError, match="vgg backbone makes the image") as refused:
        build_extractor("logmel:image_size=224")
    assert "backbone_params" in str(refused.value)
    # kept in the id as null: stores written before the image form went keep their ids
    assert LogMel().params()["image_size"] is None
    assert LogMel(image_size=None).id == LogMel().id


def test_trim_and_level_make_features_gain_and_silence_invariant() -> None:
    tone = voiced_tone(1.0)
    padded = np.concatenate([np.zeros(8000, np.float32), tone, np.zeros(16000, np.float32)])
    plain = LogMel(fixed_duration_s=None)
    robust = LogMel(fixed_duration_s=None, trim_db=35, level="rms")
    # plain log-mel shifts by 2 ln(gain) with the recording level ...
    full = plain.extract(tone, 16_000)
    shift = plain.extract(0.1 * tone, 16_000) - full
    strong = full > np.log(1e-2)  # bins well above the log offset's floor
    assert np.median(shift[strong]) == pytest.approx(2 * np.log(0.1), abs=0.05)
    # ... the level-normalised one does not, and the silence around the tone is cut
    a = robust.extract(tone, 16_000)
    b = robust.extract(0.1 * padded, 16_000)
    assert abs(len(b) - len(a)) <= 3 and len(b) < 0.5 * len(plain.extract(padded, 16_000))
    # trimming keeps up to a frame of silence at each end and moves the frame grid, so
    # compare the median spectra
    med_a, med_b = np.median(a, axis=0), np.median(b, axis=0)
    strong_a = med_a > np.log(1e-2)
    assert strong_a.sum() > 10
    assert np.median(np.abs(med_b - med_a)[strong_a]) < 0.1  # vs 4.6 without `level`
    # the options enter the id only when switched on (old feature stores stay valid)
    assert "trim_db" not in plain.params() and "level" not in plain.params()
    assert robust.id != plain.id
    assert build_extractor(robust.spec()).id == robust.id


@pytest.mark.parametrize("spec", [
    "logmel:preset=unknown",
    "logmel:win_length_samples=1024,n_fft=512",
    "logmel:image_size=0",
    "logmel:normalise=global",
    "logmel:hop_length_samples=0",
    "logmel:f_max_hz=12000",
    "logmel:fixed_duration_s=-1",
    "logmel:bogus=1",
    "logmel:level=loud",
    "logmel:trim_db=0",
    "logmel:trim_db=-5",
])
def test_bad_parameters_raise(spec: str) -> None:
    with pytest.raises(FeatureError):
        build_extractor(spec)


def test_bad_waveform_raises() -> None:
    with pytest.raises(FeatureError, match="1-D"):
        LogMel().extract(np.zeros((2, 100), np.float32), 16_000)
    with pytest.raises(FeatureError, match="empty"):
        LogMel().extract(np.zeros(0, np.float32), 16_000)
