"""``recommended_tuned``: the recipe on Whisper layers tuned on source + pseudo-labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emobridge.errors import ConfigError, EmobridgeError, EmobridgeWarning, FeatureError
from emobridge.inference.bundle import load_bundle, save_bundle
from emobridge.methods import EmotionData, build_method
from emobridge.methods.tuned_recipe import RecommendedTuned, confident_picks
from emobridge.metrics import unweighted_average_recall
from emobridge.models.layer_delta import write_delta
from emobridge.training.encoder_tuning import span_delta, tune_whisper_layers
from tests.test_encoder_tuning import CLASSES, tiny  # noqa: F401 (the fixture)

torch.set_num_threads(1)


def _domain(n: int, seed: int, shift: float, language: str, speakers: int = 4,
            dims: int = 16) -> EmotionData:
    """Frames around class centres shared by both domains, the domain moved by ``shift``."""
    centres = 2.0 * np.random.default_rng(0).standard_normal((len(CLASSES), dims))
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    feats = [(centres[y] + shift + rng.standard_normal((8 + i % 5, dims))).astype(np.float32)
             for i, y in enumerate(labels)]
    return EmotionData(feats, labels, [f"{language}{i // 4 % speakers}" for i in range(n)],
                       [language] * n, [f"{language}/{i}.wav" for i in range(n)], CLASSES)


def _method(folder, **params) -> RecommendedTuned:
    return build_method("recommended_tuned", **{"encoder_model": str(folder), "first": 2,
                                                "last": 3, "lr_layers": 1e-3, **params})


def test_fits_tunes_on_source_and_pseudo_labels_and_predicts(tiny):  # noqa: F811
    folder, _ = tiny
    source, target = _domain(48, 1, 0.0, "de"), _domain(40, 2, 0.5, "it")
    method = _method(folder, source_cap=20).fit(source, target.without_labels())
    proba = method.predict_proba(target)
    assert proba.shape == (40, 4) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    report = method.fit_report()
    assert report["pseudo_labelled"] == 20 and report["tuned_on"] == 40  # 20 + half of 40
    assert unweighted_average_recall(target.labels, proba.argmax(1)) >= 0.5  # chance 0.25
    assert {k.split(".")[1] for k in method.delta_} == {"1", "2"}  # states 2-3: layers 1, 2
    assert all(v.dtype == np.float16 for v in method.delta_.values())
    again = _method(folder, source_cap=20).fit(source, target.without_labels())
    np.testing.assert_array_equal(again.predict_proba(target), proba)  # seeded


def test_saved_and_bundled_models_predict_as_fitted(tiny, tmp_path):  # noqa: F811
    folder, _ = tiny
    source, target = _domain(32, 1, 0.0, "de"), _domain(24, 2, 0.5, "it")
    method = _method(folder, rank=2, epochs=1).fit(source, target.without_labels(),
                                                   target.subset(range(4)))
    proba = method.predict_proba(target)
    loaded = RecommendedTuned.load(method.save(tmp_path / "m"))
    np.testing.assert_allclose(loaded.predict_proba(target), proba, atol=1e-6)
    spec = f"whisper:model={folder},backend=torch,layer=1,pooling=none,level=rms"
    bundle = load_bundle(save_bundle(method, tmp_path / "b", extractor=spec))
    np.testing.assert_allclose(bundle.method.predict_proba(target), proba, atol=1e-6)
    assert bundle.method.fit_report()["tuned_on"] == 32 + 12 + 4


def test_refuses_vectors_bad_settings_and_unfitted_use(tiny):  # noqa: F811
    folder, _ = tiny
    with pytest.raises(ConfigError, match="needs frames"):
        build_method("recommended_tuned").check_features("vector", 1536)
    source = _domain(16, 1, 0.0, "de")
    vectors = EmotionData([f.mean(0) for f in source.features], source.labels,
                          source.speakers, source.languages, source.ids, CLASSES)
    with pytest.raises(ConfigError, match="frames of hidden state 1"):
        _method(folder, epochs=1).fit(vectors)
    for params, match in [({"pick_share": 0}, "pick_share"), ({"source_cap": 0}, "source_cap"),
                          ({"rank": 0}, "rank"), ({"recipe": {"views": 2}}, "views"),
                          ({"recipe": {"C": -1}}, "C"), ({"last": 4}, "last < 4")]:
        with pytest.raises(ConfigError, match=match):
            _method(folder, **params).fit(source)
    with pytest.raises(EmobridgeError, match="call fit"):
        _method(folder).predict_proba(source)


def test_confident_picks_take_the_top_share_of_each_predicted_class():
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.45, 0.55],
                      [0.8, 0.2]])
    assert confident_picks(proba, 0.5).tolist() == [0, 2]
    assert confident_picks(proba, 1.0).tolist() == list(range(6))
    assert confident_picks(proba, 0.01).tolist() == [0, 2]  # at least one per class


def test_source_delta_takes_pseudo_labels_from_the_mean_of_both_layers(tiny, tmp_path):  # noqa: F811
    folder, encoder = tiny
    source, target = _domain(32, 1, 0.0, "de"), _domain(24, 2, 0.5, "it")
    plain = _method(folder, epochs=1).fit(source, target.without_labels())
    # a zero change: both probabilities are the pretrained layers', so is their mean
    zero = {f"layers.{i}.fc1.bias": np.zeros(encoder.layers[i].fc1.bias.shape, np.float32)
            for i in (1, 2)}
    write_delta(tmp_path / "zero.safetensors", zero, {"hidden_states": "2-3"})
    same = _method(folder, epochs=1, source_delta=str(tmp_path / "zero.safetensors"),
                   source_delta_speakers=4).fit(source, target.without_labels())
    np.testing.assert_array_equal(same.predict_proba(target), plain.predict_proba(target))
    span = tune_whisper_layers(encoder, source, 2, 3, epochs=2, lr_layers=1e-2)
    write_delta(tmp_path / "src.safetensors", span_delta(encoder, span, 2, rank=None),
                {"hidden_states": "2-3"})
    method = _method(folder, epochs=1, source_delta=str(tmp_path / "src.safetensors"),
                     source_delta_speakers=4)
    method.fit(source, target.without_labels()).span_ = method._span()  # pretrained again
    pool = method._pool_proba(source, target, None)
    vectors = method._vectors(target)
    pretrained = method._fit_recipe(source, vectors, None).predict_proba(vectors)  # by hand
    method.span_ = method._source_span()
    vectors = method._vectors(target)
    tuned = method._fit_recipe(source, vectors, None).predict_proba(vectors)
    assert not np.allclose(tuned, pretrained, atol=1e-3)  # the delta changed something
    np.testing.assert_allclose(pool, (pretrained + tuned) / 2, atol=1e-6)
    assert method.fit_report()["picks_from"] == "pretrained and source-tuned layers"
    few = _method(folder, epochs=1, source_delta=str(tmp_path / "src.safetensors"))
    with pytest.warns(EmobridgeWarning, match="4 speakers, fewer than source_delta_speakers"):
        few.fit(source, target.without_labels())  # 4 speakers < 12 by default
    np.testing.assert_array_equal(few.predict_proba(target), plain.predict_proba(target))
    assert "not used" in few.fit_report()["picks_from"]


def test_source_delta_of_other_layers_or_not_a_delta_is_refused(tiny, tmp_path):  # noqa: F811
    folder, encoder = tiny
    source, target = _domain(16, 1, 0.0, "de"), _domain(8, 2, 0.5, "it")
    zero = {"layers.1.fc1.bias": np.zeros(encoder.layers[1].fc1.bias.shape, np.float32)}
    write_delta(tmp_path / "other.safetensors", zero, {"hidden_states": "2-4"})
    with pytest.raises(ConfigError, match="other.safetensors holds hidden states 2-4, not 2-3"):
        _method(folder, epochs=1, source_delta=str(tmp_path / "other.safetensors"),
                source_delta_speakers=4).fit(source, target.without_labels())
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(FeatureError, match="junk.safetensors"):
        _method(folder, epochs=1, source_delta=str(tmp_path / "junk.safetensors"),
                source_delta_speakers=4).fit(source, target.without_labels())
    for params in ({"source_delta": ""}, {"source_delta_speakers": 0},
                   {"source_delta_speakers": "12"}):
        with pytest.raises(ConfigError, match=next(iter(params))):
            _method(folder, **params).fit(source)
