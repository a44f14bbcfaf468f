"""The deep_wccn method: pooled vectors, frames, top Whisper layers on cached frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emobridge.errors import ConfigError
from emobridge.methods import EmotionData, build_method
from emobridge.methods.deep_wccn import DeepWCCNMethod, statistics_pooling
from emobridge.metrics import unweighted_average_recall
from emobridge.models.whisper_encoder import WhisperEncoder, WhisperTopLayers
from emobridge.protocols import ProtocolError, balance_by_repetition
from tests.conftest import save_tiny_whisper

torch.set_num_threads(1)

CLASSES = ("anger", "happiness", "neutral", "sadness")


def gaussians(n: int, seed: int, frames: bool = False, dims: int = 10, language: str = "de",
              shift: float = 0.0) -> EmotionData:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    centres = 3.0 * np.eye(len(CLASSES), dims)
    feats = []
    for y in labels:
        shape = (int(rng.integers(5, 12)), dims) if frames else (dims,)
        feats.append((centres[y] + 0.6 * rng.normal(size=shape) + shift).astype(np.float32))
    return EmotionData(feats, labels, [f"{language}-{i % 4}" for i in range(n)],
                       [language] * n, [f"{language}/{seed}/{i}.wav" for i in range(n)], CLASSES)


def _params(**extra):
    return {"epochs": 8, "batch_size": 14, "lr": 0.05, "device": "cpu", "seed": 0,
            "hidden_dim": 16, "dropout": 0.1, **extra}


@pytest.mark.parametrize("frames", [False, True], ids=["vectors", "frames"])
@pytest.mark.parametrize("wccn", [True, False])
def test_learns_and_round_trips(tmp_path, frames, wccn):
    source = EmotionData.concat([gaussians(40, 0, frames), gaussians(16, 1, frames, language="en")])
    test = gaussians(24, 2, frames, language="it", shift=0.2)
    method = build_method("deep_wccn", **_params(wccn=wccn)).fit(source)
    assert unweighted_average_recall(test.labels, method.predict(test)) > 0.9
    state = method.model_.state_dict()
    assert ("wccn.projection" in state) is wccn
    if wccn:  # trained: the projection moved away from the identity
        assert not torch.allclose(state["wccn.projection"], torch.eye(16))
        assert int(method.model_.wccn.class_batches.min()) > 0
    assert method.embed(test).shape == (24, 16)
    loaded = DeepWCCNMethod.load(method.save(tmp_path / "m"))
    np.testing.assert_allclose(loaded.predict_proba(test), method.predict_proba(test),
                               atol=1e-6)


def test_optimizer_is_the_papers_adagrad_with_the_shared_schedule():
    method = build_method("deep_wccn", **_params(lr_decay_every_epochs=2, lr_decay_gamma=0.5))
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    model[0].weight.requires_grad_(False)  # frozen parameters stay out of Adagrad
    optimizer, scheduler = method.configure_optimizer(model, method.train_config())
    assert isinstance(optimizer, torch.optim.Adagrad)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 3
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR) and scheduler.step_size == 2


def test_languages_repeated_to_the_largest_and_few_shot_rows_join():
    source = EmotionData.concat([gaussians(40, 0), gaussians(10, 1, language="en")])
    few = gaussians(4, 3, language="it")
    method = build_method("deep_wccn", **_params(epochs=1))
    method.fit(source, target_labelled=few)
    stream = method.training_streams(_fitdata(source, few))["train"]
    languages, counts = np.unique(stream.languages.astype(str), return_counts=True)
    assert dict(zip(languages, counts.tolist(), strict=True)) == {"de": 40, "en": 40, "it": 40}
    assert len(method.history_) == 1
    off = build_method("deep_wccn", **_params(epochs=1, balance_languages=False))
    assert len(off.training_streams(_fitdata(source, few))["train"]) == 54


def _fitdata(source, few):
    from emobridge.methods.phases import FitData

    return FitData(source, target_labelled=few)


def test_balance_by_repetition():
    idx = balance_by_repetition(["de"] * 2 + ["en"] * 7 + ["it"] * 3)
    assert np.bincount(idx).tolist() == [4, 4] + [1] * 7 + [2, 2, 2]
    assert balance_by_repetition(["a"] * 3, max_repeats=2).tolist() == [0, 1, 2]
    assert np.bincount(balance_by_repetition(["a", "b", "b", "b", "b"], max_repeats=2)
                       ).tolist() == [2, 1, 1, 1, 1]
    with pytest.raises(ProtocolError, match="max_repeats"):
        balance_by_repetition(["a"], max_repeats=0)


def test_statistics_pooling_ignores_padding():
    x = torch.randn(2, 7, 3)
    x[1, 4:] = 99.0
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    pooled = statistics_pooling(x, mask)
    torch.testing.assert_close(pooled[1], statistics_pooling(x[1:, :4], None)[0])
    assert pooled.shape == (2, 6)


@pytest.mark.parametrize("params, match", [
    ({"ssl_loss_weight": 0.1}, "needs encoder 'hf' with trainable_layers: all"),
    ({"ssl_loss_weight": -1.0}, "ssl_loss_weight must be >= 0"),
    ({"ssl_mask_prob": 0.0}, "ssl_mask_prob in"),
    ({"encoder": "whisper", "trainable_layers": "all"}, "only encoder 'hf'"),
    ({"encoder": "hf", "trainable_layers": "most"}, "trainable_layers"),
    ({"encoder": "wav2vec"}, "null, 'whisper' or 'hf'"),
    ({"smoothing": 1.5}, "smoothing"),
    ({"encoder": "whisper"}, "needs frame features"),
    ({"encoder": "whisper", "trainable_layers": 0}, "trainable_layers"),
    ({"encoder": "whisper", "normalise": "global"}, "normalise"),
    ({"backbone": "snsa"}, "not used"),
])
def test_bad_parameters(params, match):
    with pytest.raises(ConfigError, match=match):
        build_method("deep_wccn", **_params(**params)).fit(gaussians(8, 0))


# -- top Whisper layers on cached frames ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    folder = save_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))
    return folder, WhisperEncoder.from_pretrained(folder)


def test_top_layers_on_cached_frames_equal_the_full_encoder(tiny_whisper):
    _, encoder = tiny_whisper
    mel = torch.randn(2, 80, 40)
    with torch.no_grad():
        out = encoder(mel, output_hidden_states=True, lengths=torch.tensor([40, 26]))
        top = WhisperTopLayers.from_encoder(encoder, 2).eval()
        mask = torch.arange(20)[None, :] < out.lengths[:, None]
        result = top(out.hidden_states[1], mask)
    assert top.first_layer == 1 and len(top.layers) == 2
    torch.testing.assert_close(result[0], out.last_hidden_state[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(result[1, :13], out.last_hidden_state[1, :13], atol=1e-5,
                               rtol=1e-4)
    with pytest.raises(ConfigError, match="1..3"):
        WhisperTopLayers.from_encoder(encoder, 4)


def test_fine_tunes_top_whisper_layers(tiny_whisper, tmp_path):
    folder, encoder = tiny_whisper
    gen = torch.Generator().manual_seed(0)
    feats = []
    labels = np.arange(24) % 4
    with torch.no_grad():  # frames of layer K = 3 - 1 = 2, as the feature store holds them
        for y in labels:
            mel = torch.randn(80, 30, generator=gen) + float(y)
            feats.append(encoder(mel, output_hidden_states=True).hidden_states[2][0].numpy())
    data = EmotionData(feats, labels, [f"s{i % 3}" for i in range(24)], ["de"] * 24,
                       [f"{i}.wav" for i in range(24)], CLASSES)
    method = build_method("deep_wccn", **_params(
        epochs=2, encoder="whisper", encoder_model=str(folder), trainable_layers=1))
    method.fit(data)
    names = list(method.model_.state_dict())
    assert any(n.startswith("encoder.layers.0.") for n in names)
    assert not any(n.startswith("encoder.layers.1.") for n in names)  # only the top layer
    assert method.normaliser_.mode == "none"
    before = WhisperTopLayers.from_encoder(encoder, 1).state_dict()["layers.0.fc1.weight"]
    assert not torch.equal(method.model_.encoder.layers[0].fc1.weight.detach(), before)
    loaded = DeepWCCNMethod.load(method.save(tmp_path / "w"))
    np.testing.assert_allclose(loaded.predict_proba(data), method.predict_proba(data),
                               atol=1e-5)
    too_many = build_method("deep_wccn", **_params(
        epochs=1, encoder="whisper", encoder_model=str(folder), trainable_layers=4))
    with pytest.raises(ConfigError, match="has 3 layers"):
        too_many.fit(data)


# -- top layers of a Hugging Face encoder ----------------------------------------------------


def _tiny_hf(kind: str, stable: bool):
    transformers = pytest.importorskip("transformers")
    config_class = {"wav2vec2": transformers.Wav2Vec2Config,
                    "hubert": transformers.HubertConfig,
                    "wavlm": transformers.WavLMConfig}[kind]
    torch.manual_seed(0)
    config = config_class(hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                          intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 4),
                          conv_kernel=(10, 8), num_conv_pos_embeddings=4,
                          num_conv_pos_embedding_groups=2, do_stable_layer_norm=stable,
                          feat_extract_norm="layer" if stable else "group")
    return transformers.AutoModel.from_config(config).eval()


@pytest.mark.parametrize("kind, stable", [("wav2vec2", True), ("wav2vec2", False),
                                          ("hubert", False)])
def test_hf_top_layers_on_cached_frames_equal_the_full_model(kind, stable):
    from emobridge.models.hf_encoder import HFTopLayers

    model = _tiny_hf(kind, stable)
    with torch.no_grad():
        alone = [model(torch.randn(1, n), output_hidden_states=True) for n in (1600, 1000)]
        frames = [o.hidden_states[1][0] for o in alone]
        x = torch.zeros(2, len(frames[0]), 16)
        x[0], x[1, : len(frames[1])] = frames[0], frames[1]
        x[1, len(frames[1]):] = 5.0  # padding must not leak in
        mask = torch.arange(x.shape[1])[None, :] < torch.tensor([[len(f)] for f in frames])
        top = HFTopLayers(model, 2).eval()
        out = top(x, mask)
    for row, single in enumerate(alone):
        n = len(frames[row])
        torch.testing.assert_close(out[row, :n], single.last_hidden_state[0], atol=1e-5,
                                   rtol=1e-4)
    with pytest.raises(ConfigError, match="has 3 layers"):
        HFTopLayers(model, 4)


def test_hf_wavlm_refused():
    from emobridge.models.hf_encoder import HFTopLayers

    with pytest.raises(ConfigError, match="'wavlm'"):
        HFTopLayers(_tiny_hf("wavlm", False), 1)


def test_fine_tunes_top_hf_layers(tmp_path):
    model = _tiny_hf("wav2vec2", True)
    model.save_pretrained(tmp_path / "tiny-w2v")
    gen = torch.Generator().manual_seed(1)
    labels = np.arange(16) % 4
    with torch.no_grad():  # frames of layer K = 3 - 2 = 1
        feats = [model(torch.randn(1, 1200, generator=gen) + float(y),
                       output_hidden_states=True).hidden_states[1][0].numpy() for y in labels]
    data = EmotionData(feats, labels, [f"s{i % 3}" for i in range(16)], ["de"] * 16,
                       [f"{i}.wav" for i in range(16)], CLASSES)
    method = build_method("deep_wccn", **_params(
        epochs=1, encoder="hf", encoder_model=str(tmp_path / "tiny-w2v"), trainable_layers=2))
    method.fit(data)
    assert sum(n.startswith("encoder.layers.") for n in method.model_.state_dict()) > 0
    loaded = DeepWCCNMethod.load(method.save(tmp_path / "m"))
    np.testing.assert_allclose(loaded.predict_proba(data), method.predict_proba(data),
                               atol=1e-5)
    with pytest.raises(ConfigError, match="needs encoder_model"):
        build_method("deep_wccn", **_params(encoder="hf")).fit(data)
