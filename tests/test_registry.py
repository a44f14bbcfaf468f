"""The class registry shared by readers, extractors and methods."""

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
