"""random_forest: scikit-learn's forest, pickle-free save / load, optional WCCN."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from emobridge.errors import ConfigError, EmobridgeError
from emobridge.fileio import read_arrays
from emobridge.methods import EmotionData, build_method
from emobridge.methods.random_forest import RandomForestMethod
from emobridge.metrics import unweighted_average_recall

CLASSES = ("anger", "happiness", "neutral", "sadness")


def vectors(n: int, seed: int, language: str = "de", dims: int = 6,
            labels: np.ndarray | None = None) -> EmotionData:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4 if labels is None else labels
    feats = [(2.0 * np.eye(4, dims)[y] + rng.normal(size=dims)).astype(np.float32)
             for y in labels]
    return EmotionData(feats, labels, [f"{language}{i % 3}" for i in range(n)],
                       [language] * n, [f"{language}/{seed}/{i}" for i in range(n)], CLASSES)


def test_matches_scikit_learn_predict_proba():
    source, test = vectors(80, 0), vectors(30, 1)
    method = build_method("random_forest", n_estimators=20, seed=3, normalise="none",
                          balance_languages=False).fit(source)
    reference = RandomForestClassifier(n_estimators=20, max_depth=5, random_state=3).fit(
        source.stacked(), source.labels)
    np.testing.assert_allclose(method.predict_proba(test),
                               reference.predict_proba(test.stacked()), atol=1e-12)
    assert unweighted_average_recall(test.labels, method.predict(test)) > 0.6


def test_default_per_corpus_statistics_absorb_a_recording_offset():
    """A held-out corpus recorded at another level (every functional shifted): raw values
    fall outside the thresholds the trees learnt; the default per-corpus z does not."""
    source = vectors(80, 0)
    shifted = vectors(40, 1, language="it")
    shifted = EmotionData([f + 6.0 for f in shifted.features], shifted.labels,
                          shifted.speakers, shifted.languages, shifted.ids, CLASSES)
    default = build_method("random_forest", n_estimators=20, seed=0).fit(source)
    raw = build_method("random_forest", n_estimators=20, seed=0, normalise="none").fit(source)
    assert default.normalise == "per_corpus"
    assert unweighted_average_recall(shifted.labels, default.predict(shifted)) > 0.6
    assert unweighted_average_recall(shifted.labels, raw.predict(shifted)) < 0.4


def test_class_absent_from_training_gets_zero_probability():
    source = vectors(30, 0, labels=np.arange(30) % 3)  # no "sadness"
    proba = build_method("random_forest", n_estimators=5).fit(source).predict_proba(
        vectors(8, 1))
    assert proba.shape == (8, 4)
    np.testing.assert_allclose(proba[:, 3], 0.0)
    np.testing.assert_allclose(proba.sum(1), 1.0)


@pytest.mark.parametrize("wccn", [False, True])
def test_save_load_without_pickle(tmp_path, wccn):
    source = EmotionData.concat([vectors(40, 0), vectors(12, 2, "en")])
    few = vectors(4, 3, "it")
    method = build_method("random_forest", n_estimators=10, wccn=wccn, wccn_smoothing=0.1,
                          normalise="per_corpus").fit(source, target_labelled=few)
    folder = method.save(tmp_path / "rf")
    meta = json.loads((folder / "method.json").read_text())
    assert meta["method"] == "random_forest"
    arrays = read_arrays(folder / "model.safetensors")  # the format of every method
    assert ("wccn.projection" in arrays) == wccn and "forest.threshold" in arrays
    loaded = RandomForestMethod.load(folder)
    test = vectors(20, 4, "it")
    np.testing.assert_array_equal(loaded.predict_proba(test), method.predict_proba(test))
    np.testing.assert_array_equal(loaded.embed(test), method.embed(test))
    if wccn:  # the embedding is the WCCN-transformed vector
        assert not np.allclose(method.embed(test), method.normaliser_.transform(test)
                               .stacked())


def test_errors():
    frames = EmotionData([np.zeros((3, 2), np.float32)] * 2, [0, 1], ["a", "b"], ["de"] * 2,
                         ["x", "y"], CLASSES)
    with pytest.raises(ConfigError, match="frame sequences"):
        build_method("random_forest").fit(frames)
    with pytest.raises(ConfigError, match="max_depth"):
        build_method("random_forest", max_depth="deep").fit(vectors(8, 0))
    with pytest.raises(EmobridgeError, match="fit"):
        build_method("random_forest").predict_proba(vectors(4, 0))
    with pytest.raises(EmobridgeError, match="method.json"):
        RandomForestMethod.load("/nonexistent/rf")
