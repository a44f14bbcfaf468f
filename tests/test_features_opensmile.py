"""openSMILE extractor: the real openSMILE on generated tones."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from emobridge.errors import FeatureError
from emobridge.features import build_extractor
from tests.conftest import voiced_tone

pytest.importorskip("opensmile")


@pytest.mark.parametrize(("feature_set", "dims"), [
    ("eGeMAPSv02", 88), ("emobase", 988), ("ComParE_2016", 6373),
])
def test_functionals_dimensions(feature_set: str, dims: int) -> None:
    ext = build_extractor(f"opensmile:feature_set={feature_set}")
    feats = ext.extract(voiced_tone(1.0), 16_000)
    assert ext.output == "vector"
    assert feats.shape == (dims,) and feats.dtype == np.float32
    assert np.isfinite(feats).all()
    assert len(ext.feature_names) == dims


def test_egemaps_pitch_follows_the_tone() -> None:
    ext = build_extractor("opensmile")  # eGeMAPSv02 functionals by default
    col = ext.feature_names.index("F0semitoneFrom27.5Hz_sma3nz_amean")
    for f0 in (120.0, 240.0):
        semitones = ext.extract(voiced_tone(1.0, f0_hz=f0), 16_000)[col]
        assert semitones == pytest.approx(12 * np.log2(f0 / 27.5), abs=1.0)


def test_low_level_descriptors_are_frames() -> None:
    ext = build_extractor("opensmile:feature_level=lld")
    feats = ext.extract(voiced_tone(1.0), 16_000)
    assert ext.output == "frames"
    assert feats.ndim == 2 and feats.shape[1] == 25 and 90 <= feats.shape[0] <= 100


def test_names_are_case_insensitive_and_ids_stable() -> None:
    a = build_extractor("opensmile:feature_set=egemapsv02")
    b = build_extractor({"name": "opensmile", "params": {"feature_set": "eGeMAPSv02"}})
    assert a.id == b.id and a.params()["feature_set"] == "eGeMAPSv02"
    assert build_extractor("opensmile:feature_set=emobase").id != a.id
    clone = pickle.loads(pickle.dumps(a))  # picklable for process pools
    wave = voiced_tone(0.5)
    np.testing.assert_array_equal(clone.extract(wave, 16_000), a.extract(wave, 16_000))


def test_resamples_other_rates() -> None:
    ext = build_extractor("opensmile")
    feats = ext.extract(voiced_tone(1.0, sample_rate_hz=44_100), 44_100)
    col = ext.feature_names.index("F0semitoneFrom27.5Hz_sma3nz_amean")
    assert feats[col] == pytest.approx(12 * np.log2(150 / 27.5), abs=1.0)


@pytest.mark.parametrize("spec", [
    "opensmile:feature_set=eGeMAPSv99",
    "opensmile:feature_level=frames",
    "opensmile:sample_rate_hz=0",
])
def test_bad_parameters(spec: str) -> None:
    with pytest.raises(FeatureError):
        build_extractor(spec)
