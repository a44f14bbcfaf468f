"""HF encoder extractor on tiny random HuBERT / wav2vec 2.0 / WavLM models saved locally."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emobridge.errors import FeatureError
from emobridge.features import FeatureStore, build_extractor
from emobridge.features.extractors.hf_encoder import MODEL_ALIASES, HFEncoder
from tests.conftest import voiced_tone, write_tone

transformers = pytest.importorskip("transformers")
# WavLM's own attention code triggers this torch deprecation warning; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
torch = pytest.importorskip("torch")

TINY = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 64, "conv_dim": (16, 16), "conv_kernel": (10, 3),
    "conv_stride": (5, 2), "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2,
}
KINDS = {
    "hubert": ("HubertConfig", "HubertModel"),
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model"),
    "wavlm": ("WavLMConfig", "WavLMModel"),
}


def _save_tiny(folder: Path, kind: str, norm: str = "layer",
               feature_extractor: dict | None = None) -> str:
    config_cls, model_cls = (getattr(transformers, n) for n in KINDS[kind])
    torch.manual_seed(0)
    model = model_cls(config_cls(**TINY, feat_extract_norm=norm)).eval()
    model.save_pretrained(folder)
    if feature_extractor is not None:
        transformers.Wav2Vec2FeatureExtractor(**feature_extractor).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hf")
    models = {kind: _save_tiny(root / kind, kind) for kind in KINDS}
    models["wav2vec2-group"] = _save_tiny(root / "w2v-group", "wav2vec2", norm="group")
    models["wav2vec2-fe"] = _save_tiny(
        root / "w2v-fe", "wav2vec2", norm="group",
        feature_extractor={"do_normalize": True, "return_attention_mask": False})
    return models


def _waves() -> list[np.ndarray]:
    return [voiced_tone(d, f0_hz=f, seed=i)
            for i, (d, f) in enumerate([(0.3, 120), (0.11, 200), (0.5, 150), (0.2, 260)])]


@pytest.mark.parametrize("kind", list(KINDS))
def test_shapes_pooling_and_layers(tiny_models: dict[str, str], kind: str) -> None:
    model = tiny_models[kind]
    wave = voiced_tone(0.5)
    n_frames = 799  # (8000 - 10) // 5 + 1 = 1599, then (1599 - 3) // 2 + 1
    frames = build_extractor({"name": "hf", "params": {"model": model, "pooling": "none"}})
    assert frames.output == "frames"
    last = frames.extract(wave, 16_000)
    assert last.shape == (n_frames, 32) and last.dtype == np.float32
    mean = build_extractor({"name": "hf", "params": {"model": model, "pooling": "mean"}})
    np.testing.assert_allclose(mean.extract(wave, 16_000), last.mean(axis=0), atol=1e-5)
    meanstd = HFEncoder(model, pooling="meanstd").extract(wave, 16_000)
    assert meanstd.shape == (64,)
    both = HFEncoder(model, layer=[1, -1], pooling="none").extract(wave, 16_000)
    first = HFEncoder(model, layer=1, pooling="none").extract(wave, 16_000)
    np.testing.assert_allclose(both, np.concatenate([first, last], axis=1), atol=1e-5)
    all_layers = [HFEncoder(model, layer=i, pooling="none").extract(wave, 16_000)
                  for i in range(3)]
    np.testing.assert_allclose(HFEncoder(model, layer="mean", pooling="none").extract(
        wave, 16_000), np.mean(all_layers, axis=0), atol=1e-5)
    assert not np.allclose(all_layers[0], all_layers[-1])


@pytest.mark.parametrize("kind", ["hubert", "wavlm", "wav2vec2-group"])
def test_batch_matches_single(tiny_models: dict[str, str], kind: str) -> None:
    ext = HFEncoder(tiny_models[kind], layer=[0, 2], pooling="none", batch_size=4)
    waves = _waves()
    batch = ext.extract_batch(waves, 16_000)
    for wave, got in zip(waves, batch, strict=True):
        want = ext.extract(wave, 16_000)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_masks_follow_the_front_end(tiny_models: dict[str, str]) -> None:
    assert HFEncoder(tiny_models["hubert"]).load()["mask"] is True  # layer-norm front end
    assert HFEncoder(tiny_models["wav2vec2-group"]).load()["mask"] is False


def test_normalisation_from_the_feature_extractor(tiny_models: dict[str, str]) -> None:
    wave = voiced_tone(0.3)
    auto = HFEncoder(tiny_models["wav2vec2-fe"], pooling="mean")
    assert auto.load()["normalise"] is True
    # zero-mean / unit-variance input: the gain of the recording does not matter
    np.testing.assert_allclose(auto.extract(3 * wave, 16_000), auto.extract(wave, 16_000),
                               atol=1e-4)
    raw = HFEncoder(tiny_models["wav2vec2-fe"], pooling="mean", normalise=False)
    assert not np.allclose(raw.extract(3 * wave, 16_000), raw.extract(wave, 16_000), atol=1e-4)
    assert raw.id != auto.id


def test_chunking_long_audio(tiny_models: dict[str, str]) -> None:
    model = tiny_models["hubert"]
    wave = voiced_tone(1.0)
    # without normalisation (which uses the whole utterance) chunks are encoded independently
    chunked = HFEncoder(model, pooling="none", max_duration_s=0.5, normalise=False).extract(
        wave, 16_000)
    whole = HFEncoder(model, pooling="none", normalise=False)
    halves = np.concatenate([whole.extract(wave[:8000], 16_000),
                             whole.extract(wave[8000:], 16_000)])
    np.testing.assert_allclose(chunked, halves, atol=1e-5)
    assert chunked.shape[0] < whole.extract(wave, 16_000).shape[0] + 2


def test_ids_params_and_errors(tiny_models: dict[str, str], tmp_path: Path) -> None:
    model = tiny_models["wavlm"]
    a = HFEncoder(model, device="cpu", batch_size=2)
    assert a.id == HFEncoder(model).id  # device and batch size are not part of the id
    assert a.id != HFEncoder(model, layer=0).id
    assert build_extractor(a.spec()).id == a.id
    assert HFEncoder("hubert-base").model == MODEL_ALIASES["hubert-base"]
    assert build_extractor("hf:model=facebook/hubert-base-ls960").model == \
        "facebook/hubert-base-ls960"  # a hub id stays a hub id (nothing is loaded yet)
    for bad in ({"layer": "last"}, {"layer": [True]}, {"pooling": "max"},
                {"max_duration_s": 0}, {"normalise": "yes"}):
        with pytest.raises(FeatureError):
            HFEncoder(model, **bad)
    with pytest.raises(FeatureError, match="out of range"):
        HFEncoder(model, layer=7).extract(voiced_tone(0.2), 16_000)
    with pytest.raises(FeatureError, match="cannot load model"):
        HFEncoder(str(tmp_path / "no-such-model")).extract(voiced_tone(0.2), 16_000)


def test_through_the_store(tiny_models: dict[str, str], tmp_path: Path) -> None:
    paths = [write_tone(tmp_path / f"a{i}.wav", duration_s=0.2 + 0.1 * i, f0_hz=100 + 40 * i)
             for i in range(3)]
    ext = HFEncoder(tiny_models["hubert"], layer=-1, pooling="meanstd")
    store = FeatureStore(tmp_path / "store")
    report = store.extract(paths, ext, batch_size=2, progress=False)
    assert report.computed == 3
    loaded = store.load(paths, ext)
    for path, got in zip(paths, loaded, strict=True):
        from emobridge.audio import load_audio

        np.testing.assert_allclose(got, ext.extract(load_audio(path), 16_000), atol=1e-4)
