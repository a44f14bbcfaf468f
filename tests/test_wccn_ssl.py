"""deep_wccn above the convolutional front end (``trainable_layers="all"``) with the paper's
auxiliary wav2vec 2.0 loss, on tiny random ``transformers`` models saved locally."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from emobridge.errors import ConfigError, EmobridgeWarning
from emobridge.methods import EmotionData, build_method
from emobridge.methods.deep_wccn import DeepWCCNMethod
from tests.conftest import voiced_tone

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
torch.set_num_threads(1)

CLASSES = ("anger", "happiness", "neutral", "sadness")
TINY = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 32, "conv_dim": (8, 8), "conv_stride": (5, 4),
        "conv_kernel": (10, 8), "num_conv_pos_embeddings": 4,
        "num_conv_pos_embedding_groups": 2, "codevector_dim": 8, "proj_codevector_dim": 8,
        "num_codevector_groups": 2, "num_codevectors_per_group": 8, "num_negatives": 5}


def _pretraining(stable: bool = True) -> transformers.Wav2Vec2ForPreTraining:
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(**TINY, do_stable_layer_norm=stable,
                                         feat_extract_norm="layer" if stable else "group")
    return transformers.Wav2Vec2ForPreTraining(config).eval()


def _hubert() -> transformers.HubertModel:
    torch.manual_seed(0)
    config = {k: v for k, v in TINY.items() if "codevector" not in k and k != "num_negatives"}
    return transformers.HubertModel(transformers.HubertConfig(**config)).eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("w2v")
    _pretraining().save_pretrained(root / "pretraining")
    _pretraining().wav2vec2.save_pretrained(root / "plain")  # no quantizer
    _hubert().save_pretrained(root / "hubert")
    return {k: str(root / k) for k in ("pretraining", "plain", "hubert")}


def test_cnn_layer_is_the_front_end_output(checkpoints):
    from emobridge.features.extractors.hf_encoder import HFEncoder

    model = _pretraining().wav2vec2
    waves = [voiced_tone(d, f0_hz=f, seed=i) for i, (d, f) in enumerate([(0.3, 120), (0.12, 200)])]
    got = HFEncoder(checkpoints["pretraining"], layer="cnn", pooling="none",
                    batch_size=2).extract_batch(waves, 16_000)
    for wave, frames in zip(waves, got, strict=True):
        x = torch.from_numpy((wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)).float()
        with torch.no_grad():
            want = model.feature_extractor(x[None]).transpose(1, 2)[0].numpy()
        assert frames.shape == want.shape and frames.shape[1] == 8  # conv_dim[-1]
        np.testing.assert_allclose(frames, want, atol=1e-5)


@pytest.mark.parametrize("kind", ["stable", "plain", "hubert"])
def test_transformer_on_cnn_frames_equals_the_full_model(kind):
    from emobridge.models.hf_encoder import HFTransformer

    full = _hubert() if kind == "hubert" else _pretraining(kind == "stable").wav2vec2
    with torch.no_grad():
        waves = [torch.randn(1, n) for n in (2400, 1500)]
        alone = [full(w) for w in waves]
        cnn = [full.feature_extractor(w).transpose(1, 2)[0] for w in waves]
        x = torch.full((2, len(cnn[0]), 8), 7.0)  # padding must not leak in
        x[0], x[1, : len(cnn[1])] = cnn[0], cnn[1]
        mask = torch.arange(x.shape[1])[None] < torch.tensor([[len(c)] for c in cnn])
        out = HFTransformer(full).eval()(x, mask)
    for row, single in enumerate(alone):
        n = len(cnn[row])
        torch.testing.assert_close(out[row, :n], single.last_hidden_state[0], atol=1e-5,
                                   rtol=1e-4)


def test_ssl_loss_equals_transformers_pretraining_loss():
    """Same masks and distractors (same numpy seed): the loss transformers'
    Wav2Vec2ForPreTraining computes from raw audio, ours from the cached front end."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import (
        _compute_mask_indices,
        _sample_negative_indices,
    )

    from emobridge.models.hf_encoder import HFTransformer

    model = _pretraining()
    wave = torch.randn(2, 3000)
    with torch.no_grad():
        cnn = model.wav2vec2.feature_extractor(wave).transpose(1, 2)
        np.random.seed(3)
        hidden, ours = HFTransformer(model, ssl=True, mask_prob=0.3).eval().forward_ssl(cnn)
        np.random.seed(3)
        shape = tuple(cnn.shape[:2])
        masked = _compute_mask_indices(shape, 0.3, 10, attention_mask=torch.ones(shape).long(),
                                       min_masks=2)
        negatives = _sample_negative_indices(shape, 5, masked)
        theirs = model(wave, mask_time_indices=torch.from_numpy(masked),
                       sampled_negative_indices=torch.from_numpy(negatives).long())
    assert masked.sum(axis=1).min() >= 2 and float(ours) > 0
    torch.testing.assert_close(ours, theirs.loss, rtol=1e-4, atol=1e-4)
    # hidden states came from the masked pass: they differ from an unmasked one
    assert not torch.allclose(hidden, model.wav2vec2(wave).last_hidden_state)


def _cnn_data(checkpoint: str, n: int = 16, seed: int = 0) -> EmotionData:
    from emobridge.features.extractors.hf_encoder import HFEncoder

    labels = np.arange(n) % len(CLASSES)
    waves = [voiced_tone(0.25 + 0.05 * (i % 3), f0_hz=110 + 60 * y, seed=seed + i)
             for i, y in enumerate(labels)]
    feats = HFEncoder(checkpoint, layer="cnn", pooling="none").extract_batch(waves, 16_000)
    return EmotionData(feats, labels, [f"s{i % 4}" for i in range(n)], ["de"] * n,
                       [f"{seed}/{i}.wav" for i in range(n)], CLASSES)


def _ssl_params(checkpoint: str, tmp_path: Path, **extra) -> dict:
    return {"encoder": "hf", "encoder_model": checkpoint, "trainable_layers": "all",
            "ssl_loss_weight": 1e-2, "ssl_mask_prob": 0.2, "epochs": 2, "batch_size": 8,
            "lr": 1e-2, "hidden_dim": 8, "device": "cpu", "seed": 0,
            "log_csv": str(tmp_path / "log.csv"), **extra}


def test_fit_with_the_auxiliary_loss_trains_the_quantizer(checkpoints, tmp_path):
    data = _cnn_data(checkpoints["pretraining"])
    before = _pretraining().quantizer.weight_proj.weight.detach().clone()
    method = build_method("deep_wccn", **_ssl_params(checkpoints["pretraining"], tmp_path))
    method.fit(data)
    state = method.model_.state_dict()
    # the wav2vec 2.0 loss reaches the pre-training head; the classifier trained too
    assert not torch.allclose(state["encoder.quantizer.weight_proj.weight"].cpu(), before)
    assert any(k.startswith("encoder.encoder.layers.") for k in state)
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert "ssl" in log[0].split(",")
    loaded = DeepWCCNMethod.load(method.save(tmp_path / "m"))
    np.testing.assert_allclose(loaded.predict_proba(data), method.predict_proba(data),
                               atol=1e-5)
    probs = method.predict_proba(data)  # prediction runs unmasked: deterministic
    np.testing.assert_allclose(method.predict_proba(data), probs, atol=1e-6)


def test_without_the_loss_no_pretraining_head_is_needed(checkpoints, tmp_path):
    data = _cnn_data(checkpoints["plain"], n=8)
    method = build_method("deep_wccn", **_ssl_params(checkpoints["plain"], tmp_path,
                                                     ssl_loss_weight=0.0, epochs=1))
    method.fit(data)
    assert not any("quantizer" in k for k in method.model_.state_dict())
    assert method.predict_proba(data).shape == (8, 4)


@pytest.mark.parametrize("which, match", [
    ("plain", "no wav2vec 2.0 pre-training head"),
    ("hubert", "needs a wav2vec 2.0 pre-training checkpoint"),
    ("missing", "cannot load encoder"),
])
def test_refusals(checkpoints, tmp_path, which, match):
    data = _cnn_data(checkpoints["pretraining"], n=8)
    model = checkpoints.get(which, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=match), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        build_method("deep_wccn", **_ssl_params(model, tmp_path)).fit(data)
    # the head the plain checkpoint lacks is named in one warning before the refusal
    assert any("start random" in str(w.message) for w in seen) == (which == "plain")


def test_reading_a_pretraining_checkpoint_as_an_encoder_is_quiet(checkpoints, caplog):
    from emobridge.features.extractors.hf_encoder import HFEncoder

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        HFEncoder(checkpoints["pretraining"], layer="cnn").load()  # its head goes unused
    assert not [r for r in caplog.records if r.name.startswith("transformers")]
    assert not [w for w in seen if issubclass(w.category, EmobridgeWarning)]


def test_hidden_state_frames_are_refused_for_all(checkpoints, tmp_path):
    from emobridge.features.extractors.hf_encoder import HFEncoder

    wave = voiced_tone(0.3)
    feats = [HFEncoder(checkpoints["pretraining"], layer=0, pooling="none").extract(
        wave, 16_000) for _ in range(8)]
    data = EmotionData(feats, np.arange(8) % 4, [f"s{i % 4}" for i in range(8)], ["de"] * 8,
                       [f"{i}.wav" for i in range(8)], CLASSES)
    with pytest.raises(ConfigError, match="convolutional front end"):
        build_method("deep_wccn", **_ssl_params(checkpoints["pretraining"], tmp_path)).fit(data)


def test_emobridge_run_with_the_auxiliary_loss(checkpoints, tmp_path):
    from emobridge.experiments import load_config, run_experiment

    spec = f"hf:model={checkpoints['pretraining']},layer=cnn,pooling=none"
    config = {
        "name": "ssl-tiny",
        "corpora": [{"id": "synth", "reader": "synthetic", "path": str(tmp_path / "corpus"),
                     "options": {"languages": ["aa", "bb"], "speakers_per_language": 3,
                                 "utterances_per_speaker_per_emotion": 1, "seed": 1}}],
        "taxonomy": {"label_set": "4class"},
        "protocol": {"domain": "language", "pairs": [{"source": "aa", "target": "bb"}],
                     "source_split": {"train": 2, "validation": 1},
                     "target_split": {"train": 1, "validation": 1, "test": 1}},
        "features": {"extractors": [spec], "store": str(tmp_path / "store")},
        "methods": [{"name": "w2v", "method": "deep_wccn", "target_labels": "none",
                     "params": {"encoder": "hf", "encoder_model": checkpoints["pretraining"],
                                "trainable_layers": "all", "ssl_loss_weight": 1e-3,
                                "epochs": 1, "hidden_dim": 8, "crop_frames": 200}}],
        "seeds": [0], "device": "cpu", "output_dir": str(tmp_path / "run"),
        "report": {"max_points": 20, "bootstrap": 0, "embeddings": False},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    run_experiment(load_config(path), log=lambda _m: None)
    (cell,) = (tmp_path / "run" / "cells").iterdir()
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["status"] == "ok", metrics
    assert 0.0 <= metrics["target"]["ua"] <= 1.0
