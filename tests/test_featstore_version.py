"""The extractor's code version is part of its id: a bumped version never reuses old features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emobridge.errors import FeatureError
from emobridge.features import FeatureStore, build_extractor
from emobridge.features.extractors.logmel import LogMel
from tests.conftest import write_tone


class FixedLogMel(LogMel):
    """The same extractor after a fix that changes its output."""

    version = 2

    def extract_batch(self, waves, sample_rate_hz: int) -> list[np.ndarray]:
        return [f + 1.0 for f in super().extract_batch(waves, sample_rate_hz)]


def test_version_1_ids_are_the_ids_from_before_versions() -> None:
    # Pinned: stores written before extractors had versions stay valid.
    assert build_extractor("logmel:n_mels=16").id == "logmel-b457fdddfdfc"
    assert LogMel.version == 1


def test_bumped_version_changes_the_id_and_recomputes(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "a.wav", duration_s=0.3)
    old, new = LogMel(n_mels=16), FixedLogMel(n_mels=16)
    assert new.params() == old.params() and new.id != old.id
    assert new.id.startswith("logmel-")
    store = FeatureStore(tmp_path / "store")
    before = store.load([path], old, compute_missing=True)[0]
    report = store.extract([path], new, progress=False)
    assert (report.computed, report.reused) == (1, 0)
    after = store.load([path], new)[0]
    np.testing.assert_allclose(after, before + 1.0)
    assert store.spec(new.id)["version"] == 2 and store.spec(old.id)["version"] == 1


def test_stored_id_of_another_version_is_read_only(tmp_path: Path) -> None:
    """A stored id whose spec now builds an extractor of another id cannot compute more."""
    first = write_tone(tmp_path / "a.wav", duration_s=0.3)
    second = write_tone(tmp_path / "b.wav", duration_s=0.3, f0_hz=220)
    store = FeatureStore(tmp_path / "store")
    old = LogMel(n_mels=16)
    store.extract([first], old, progress=False)
    stale_id = "logmel-000000000000"  # as if written by an older version of the code
    (tmp_path / "store" / old.id).rename(tmp_path / "store" / stale_id)
    assert store.load([first], stale_id)[0].shape[1] == 16  # reading still works
    with pytest.raises(FeatureError, match="another version of its code"):
        store.load([first, second], stale_id, compute_missing=True)
