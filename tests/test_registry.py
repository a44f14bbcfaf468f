"""The class registry shared by readers, extractors and methods."""

import numpy as np
import pytest

from emobridge.corpora import available_readers
from emobridge.features.registry import available_extractors
from emobridge.methods import available_methods
from emobridge.registry import Registry


def test_registry_keys_by_name_sorted_and_refuses_duplicates() -> None:
    reg: Registry[type] = Registry("widget", "emobridge.errors")
    cls_b = type("B", (), {"name": "b"})
    assert reg.register(cls_b) is cls_b  # a decorator returns the class
    reg.register(type("A", (), {"name": "a"}))
    assert list(reg.available()) == ["a", "b"] and reg.available()["b"] is cls_b
    with pytest.raises(ValueError, match="widget 'b' registered twice"):
        reg.register(type("B2", (), {"name": "b"}))


def test_listings_import_the_built_ins() -> None:
    assert {"emodb", "ravdess", "emovo", "folder", "table"} <= set(available_readers())
    assert {"logmel", "opensmile", "whisper", "hf"} <= set(available_extractors())
    assert {"source_only", "supervised", "dann", "nnpm", "pseudo_label"} <= set(
        available_methods())


def test_extractor_specs_parse_like_every_other_key_value_option() -> None:
    from emobridge.errors import ConfigError
    from emobridge.features.registry import parse_spec

    assert parse_spec("whisper:layer=[4, 5],pooling= mean ,normalise=true") == (
        "whisper", {"layer": [4, 5], "pooling": "mean", "normalise": True})
    with pytest.raises(ConfigError, match="'n_mels' given twice"):
        parse_spec("logmel:n_mels=16,n_mels=32")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_spec("logmel:n_mels")


def test_extractor_devices_resolve_like_the_trainer() -> None:
    from emobridge.errors import FeatureError
    from emobridge.features.extractors.logmel import LogMel

    wave = np.ones(1600, np.float32)
    assert LogMel(device="auto", n_mels=16).extract(wave, 16_000).shape[1] == 16
    with pytest.raises(FeatureError, match="logmel: device 'gpu': expected one of"):
        LogMel(device="gpu").extract(wave, 16_000)


def test_build_extractor_passes_the_device_to_extractors_that_take_one() -> None:
    from emobridge.features.registry import build_extractor, takes_device

    assert build_extractor("logmel", device="cuda:1").device == "cuda:1"  # not loaded yet
    assert build_extractor("logmel:device=cpu", device="cuda").device == "cpu"  # spec wins
    assert build_extractor("logmel").device == "cpu"
    assert takes_device("hf") and takes_device("whisper") and not takes_device("opensmile")
    assert not hasattr(build_extractor("opensmile", device="cuda"), "device")
    # the device is not part of the id: cached features are shared across devices
    assert build_extractor("logmel", device="cuda").id == build_extractor("logmel").id
