"""The torch baselines (source_only, supervised, dann) and the NeuralMethod base."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emobridge.errors import ConfigError, EmobridgeError
from emobridge.methods import EmotionData, available_methods, build_method
from emobridge.methods.dann import DANN
from emobridge.methods.neural import FeatureNormaliser, NeuralMethod
from emobridge.metrics import unweighted_average_recall

torch.set_num_threads(1)

CLASSES = ("anger", "happiness", "neutral", "sadness")
TINY_SNSA = {"conv_channels": [8, 8], "kernel_size": 3, "lstm_hidden": 8, "attention_dim": 8,
             "dropout": 0.1}


def gaussians(n: int, seed: int, frames: bool = False, dims: int = 10, shift: float = 0.0,
              language: str = "de", scale: float = 1.0) -> EmotionData:
    """Class-dependent Gaussians (vectors, or frame sequences of random length)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    centres = 3.0 * np.eye(len(CLASSES), dims)
    feats = []
    for y in labels:
        if frames:
            t = int(rng.integers(6, 16))
            f = centres[y] + rng.normal(size=(t, dims))
        else:
            f = centres[y] + 0.6 * rng.normal(size=dims)
        feats.append((scale * f + shift).astype(np.float32))
    speakers = [f"{language}-{i % 6}" for i in range(n)]
    return EmotionData(feats, labels, speakers, [language] * n,
                       [f"{language}/{seed}/{i}.wav" for i in range(n)], CLASSES)


def _params(frames: bool, **extra):
    params = {"epochs": 12, "batch_size": 16, "lr": 1e-2, "device": "cpu", "seed": 0}
    if frames:
        params["backbone_params"] = TINY_SNSA
    return {**params, **extra}


def _fit(name, frames, **extra):
    source = gaussians(64, 0, frames)
    target = gaussians(48, 1, frames, language="it", shift=0.3)
    test = gaussians(40, 2, frames, language="it", shift=0.3)
    method = build_method(name, **_params(frames, **extra))
    method.fit(source, target.without_labels(),
               target if name == "supervised" else None, validation=None)
    return method, test


@pytest.mark.parametrize("frames", [False, True], ids=["vectors", "frames"])
@pytest.mark.parametrize("name", ["source_only", "supervised", "dann"])
def test_each_method_learns_separable_data(name, frames):
    method, test = _fit(name, frames)
    ua = unweighted_average_recall(test.labels, method.predict(test))
    assert ua > 0.9, (name, frames, ua)
    proba = method.predict_proba(test)
    assert proba.shape == (len(test), 4)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    emb = method.embed(test)
    assert emb.shape[0] == len(test) and emb.shape[1] == method.model_.embedding_dim
    assert method.backbone_ == ("snsa" if frames else "mlp")
    assert len(method.history_) == 12


def test_same_seed_same_predictions_other_seed_differs():
    a, test = _fit("dann", True, epochs=2)
    b, _ = _fit("dann", True, epochs=2)
    c, _ = _fit("dann", True, epochs=2, seed=1)
    np.testing.assert_array_equal(a.predict_proba(test), b.predict_proba(test))
    assert not np.array_equal(a.predict_proba(test), c.predict_proba(test))


def test_predictions_do_not_depend_on_batch_composition():
    # global statistics: per corpus (the default), an unseen target language is standardised
    # with the statistics of the data predicted, so there the batch matters by design
    method, test = _fit("source_only", True, epochs=2, normalise="global")
    whole = method.predict_proba(test)
    one_by_one = np.concatenate([method.predict_proba(test.subset([i])) for i in range(5)])
    np.testing.assert_allclose(whole[:5], one_by_one, atol=1e-5)


def test_supervised_needs_target_labels():
    with pytest.raises(EmobridgeError, match="target_labelled"):
        build_method("supervised", **_params(False)).fit(gaussians(8, 0))


def test_dann_needs_target_and_reverses_gradients():
    with pytest.raises(EmobridgeError, match="target"):
        build_method("dann", **_params(False)).fit(gaussians(8, 0))
    method, _ = _fit("dann", False, epochs=1, domain_weight=0.5)
    assert method.history_[0]["domain_loss"] > 0
    assert method.lambda_at(0.0) == 0.0
    assert method.lambda_at(1.0) == pytest.approx(0.5, abs=1e-3)
    # Through the GRL, the backbone's gradient of the domain loss is the reverse of the
    # gradient without it (scaled by lambda).
    model = method.model_
    x = torch.randn(6, 10)
    domains = torch.tensor([0, 0, 0, 1, 1, 1])

    def backbone_grad(reverse: bool) -> torch.Tensor:
        model.zero_grad()
        emb = model.embed(x)
        if reverse:
            model.grl.lambda_ = 0.5
            emb = model.grl(emb)
        torch.nn.functional.cross_entropy(model.domain_classifier(emb), domains).backward()
        return model.backbone.net[0].weight.grad.clone()

    model.eval()
    plain, reversed_ = backbone_grad(False), backbone_grad(True)
    assert plain.abs().sum() > 0
    torch.testing.assert_close(reversed_, -0.5 * plain)


def test_save_load_roundtrip(tmp_path):
    method, test = _fit("dann", True, epochs=2, normalise="per_corpus")
    method.save(tmp_path / "bundle")
    meta = json.loads((tmp_path / "bundle" / "method.json").read_text())
    assert meta["method"] == "dann" and meta["params"]["domain_weight"] == 1.0
    loaded = NeuralMethod.load(tmp_path / "bundle")
    assert isinstance(loaded, DANN) and loaded.classes_ == CLASSES
    np.testing.assert_allclose(loaded.predict_proba(test), method.predict_proba(test),
                               atol=1e-6)
    with pytest.raises(EmobridgeError, match="method.json"):
        NeuralMethod.load(tmp_path)


def test_params_and_registry():
    assert {"source_only", "supervised", "dann"} <= set(available_methods())
    names = DANN.param_names()
    assert {"domain_weight", "epochs", "seed", "backbone", "normalise"} <= set(names)
    m = build_method("dann", domain_weight=0.3, epochs=3)
    assert m.get_params()["domain_weight"] == 0.3 and m.epochs == 3
    with pytest.raises(ConfigError, match="unknown parameters"):
        build_method("source_only", domain_weight=1.0)


def test_mismatched_inputs_are_rejected():
    method = build_method("source_only", **_params(False, epochs=1))
    with pytest.raises(EmobridgeError, match="fully labelled"):
        method.fit(gaussians(8, 0).without_labels())
    with pytest.raises(EmobridgeError, match="features do not match"):
        method.fit(gaussians(8, 0), validation=gaussians(8, 1, dims=5))
    with pytest.raises(EmobridgeError, match="fit"):
        method.predict(gaussians(8, 0))
    method.fit(gaussians(8, 0))
    with pytest.raises(EmobridgeError, match="expects vectors of 10 dims"):
        method.predict(gaussians(4, 0, frames=True))


def test_early_stopping_and_checkpoints_through_a_method(tmp_path):
    method, _ = _fit("source_only", False, epochs=40, patience=2, lr=1e-9,
                     checkpoint_dir=str(tmp_path / "ck"), log_csv=str(tmp_path / "log.csv"))
    # No validation data: no early stopping, every epoch runs.
    assert len(method.history_) == 40
    source, val = gaussians(32, 0), gaussians(16, 3)
    method = build_method("source_only", **_params(False, epochs=40, patience=2, lr=1e-9))
    method.fit(source, validation=val)
    assert method.train_result_.stopped_early and len(method.history_) == 3
    assert (tmp_path / "ck" / "last.pt").exists() and (tmp_path / "log.csv").exists()


def test_normaliser_modes():
    a = gaussians(30, 0, frames=True, language="de", shift=5.0, scale=3.0)
    b = gaussians(30, 1, frames=True, language="it", shift=-2.0)
    glob = FeatureNormaliser("global").fit([a, b])
    both = np.concatenate([f for d in (glob.transform(a), glob.transform(b))
                           for f in d.features])
    np.testing.assert_allclose(both.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(both.std(0), 1, atol=1e-3)
    per = FeatureNormaliser("per_corpus").fit([a])
    # A seen language uses stored statistics; an unseen one its own (transductive).
    np.testing.assert_allclose(np.concatenate(per.transform(a).features).mean(0), 0,
                               atol=1e-4)
    np.testing.assert_allclose(np.concatenate(per.transform(b).features).mean(0), 0,
                               atol=1e-4)
    spk = FeatureNormaliser("per_speaker").fit([a]).transform(a)
    first = np.concatenate([f for f, s in zip(spk.features, spk.speakers, strict=True)
                            if s == "de-0"])
    np.testing.assert_allclose(first.mean(0), 0, atol=1e-4)
    raw = FeatureNormaliser("none").fit([a]).transform(a)
    np.testing.assert_array_equal(raw.features[0], a.features[0])
    restored = FeatureNormaliser.from_dict(json.loads(json.dumps(per.to_dict())))
    np.testing.assert_allclose(restored.transform(a).features[0], per.transform(a).features[0])
    with pytest.raises(ConfigError, match="normalise"):
        FeatureNormaliser("zscore")


def test_source_only_ignores_target_statistics():
    source = gaussians(32, 0)
    target = gaussians(32, 1, shift=10.0, language="it")
    method = build_method("source_only", **_params(False, epochs=1))
    method.fit(source, target.without_labels())
    assert set(method.normaliser_.stats_) == {"de"}  # per corpus (the default): source only
    mean, _ = method.normaliser_.stats_["de"]
    np.testing.assert_allclose(mean, np.concatenate([source.stacked()]).mean(0), atol=1e-4)
