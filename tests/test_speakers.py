"""GE2E speaker encoder, the ``ge2e`` extractor and emotion-blind speaker estimation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from emobridge.errors import EmobridgeError, FeatureError
from emobridge.features.registry import build_extractor
from emobridge.features.store import FeatureStore
from emobridge.inference.speakers import (
    ClusterConfig,
    cluster_scores,
    estimate_speakers,
    estimate_speakers_with,
)
from emobridge.models import speaker_encoder as se
from tests.conftest import voiced_tone, write_tone


@pytest.fixture
def ge2e_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Random GE2E weights saved as resemblyzer saves them, named by the env variable."""
    torch.manual_seed(0)
    model = se.SpeakerEncoder()
    state = {"model_state": {**model.state_dict(), "similarity_weight": torch.tensor([10.0]),
                             "similarity_bias": torch.tensor([-5.0])}, "step": 1}
    path = tmp_path / "ge2e.pt"
    torch.save(state, path)
    monkeypatch.setenv(se.WEIGHTS_ENV, str(path))
    return path


def _waves() -> list[np.ndarray]:
    return [voiced_tone(d, f0, seed=i) for i, (d, f0) in
            enumerate([(0.4, 120.0), (1.7, 180.0), (3.3, 220.0), (2.0, 95.0)])]


# ---------------------------------------------------------------------------- encoder


def test_encoder_shape_norm_determinism_and_batching(ge2e_weights: Path) -> None:
    enc = se.SpeakerEncoder.from_pretrained()
    waves = _waves()
    together = enc.embed_utterances(waves)
    assert together.shape == (4, 256) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    alone = np.stack([enc.embed_utterances([w])[0] for w in waves])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_array_equal(enc.embed_utterances(waves), together)
    # a different batch size only regroups the partials
    np.testing.assert_allclose(enc.embed_utterances(waves, batch_size=2), together, atol=1e-5)
    # different voices give different embeddings
    assert float(together[0] @ together[2]) < 0.99999


def test_partial_slices_follow_resemblyzer() -> None:
    # 1.3 partials / s -> a step of round(16000 / 1.3 / 160) = 77 frames, 160-frame windows
    assert se.partial_slices(16_000) == [slice(0, 160)]
    three_s = se.partial_slices(48_000)
    assert [s.start for s in three_s] == [0, 77, 154]  # the last one >= 75 % covered
    assert se.partial_slices(40_000)[-1].start == 77  # 154 would be covered < 75 %: dropped
    assert se.mel_partials(np.zeros(8_000, np.float32)).shape == (1, 160, 40)


def test_preprocess_raises_quiet_audio_only_and_trims_silence() -> None:
    tone = voiced_tone(1.0)
    quiet = np.concatenate([np.zeros(16_000, np.float32), 0.001 * tone,
                            np.zeros(16_000, np.float32)])
    out = se.preprocess(quiet)
    assert 15_000 < out.size < 18_000  # silences cut, the tone kept
    # resemblyzer's order: the whole file is brought to -30 dBFS, then trimmed
    gain = 10 ** (-30 / 20) / np.sqrt(np.mean(quiet.astype(np.float64) ** 2))
    np.testing.assert_allclose(np.abs(out).max(), gain * np.abs(quiet).max(), rtol=1e-4)
    loud = 0.9 * tone / np.abs(tone).max()
    np.testing.assert_allclose(se.preprocess(loud), loud)  # above -30 dBFS: never lowered


@pytest.mark.parametrize("content", ["missing", "garbage", "wrong_keys", "pickle"])
def test_bad_weights_give_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          content: str) -> None:
    path = tmp_path / "w.pt"
    if content == "garbage":
        path.write_bytes(b"not a torch file at all")
    elif content == "wrong_keys":
        torch.save({"model_state": {"lstm.weight_ih_l0": torch.zeros(3)}}, path)
    elif content == "pickle":  # arbitrary objects are refused by weights_only=True
        torch.save({"model_state": object()}, path)
    monkeypatch.setenv(se.WEIGHTS_ENV, str(path))
    with pytest.raises(FeatureError) as info:
        se.SpeakerEncoder.from_pretrained()
    message = str(info.value)
    assert isinstance(info.value, EmobridgeError) and "\n" not in message
    assert str(path) in message and "pip install --no-deps resemblyzer==0.1.4" in message


def test_default_path_without_env_names_resemblyzer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(se.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(se.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FeatureError, match="resemblyzer==0.1.4"):
        se.default_weights_path()


# ---------------------------------------------------------------------------- extractor


def test_extractor_through_the_feature_store(ge2e_weights: Path, tmp_path: Path) -> None:
    paths = [write_tone(tmp_path / f"a/{i}.wav", duration_s=d, f0_hz=f0, seed=i)
             for i, (d, f0) in enumerate([(0.6, 110.0), (2.2, 200.0), (1.1, 160.0)])]
    # a 44.1-kHz file: the store resamples to the extractor's 16 kHz
    paths.append(write_tone(tmp_path / "a/x.wav", duration_s=1.5, sample_rate_hz=44_100))
    manifest = pd.DataFrame({"path": [str(p) for p in paths]})
    ext = build_extractor("ge2e")
    assert ext.output == "vector" and ext.id.startswith("ge2e-")
    assert ext.id == build_extractor("ge2e:batch_size=7").id  # batching is not in the id
    assert ext.id != build_extractor("ge2e:rate=2.0").id
    store = FeatureStore(tmp_path / "store")
    report = store.extract(manifest, ext)
    assert report.computed == 4
    feats = store.load(manifest, ext)
    assert [f.shape for f in feats] == [(256,)] * 4
    np.testing.assert_allclose([np.linalg.norm(f) for f in feats], 1.0, atol=1e-5)
    direct = ext.extract(voiced_tone(2.2, 200.0, seed=1), 16_000)
    np.testing.assert_allclose(feats[1], direct, atol=1e-4)
    assert store.extract(manifest, ext).computed == 0  # cached


def test_extractor_rejects_bad_parameters() -> None:
    with pytest.raises(FeatureError, match="rate"):
        build_extractor("ge2e:rate=0.1")
    with pytest.raises(FeatureError, match="min_coverage"):
        build_extractor("ge2e:min_coverage=0")


# ---------------------------------------------------------------------------- estimation


def _synthetic(n_speakers: int, per_cell: int, seed: int, emotion_scale: float = 1.6
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Speakers as clusters, emotion as shared directions that move embeddings further than
    the speaker differences do (so plain clustering follows emotion)."""
    rng = np.random.default_rng(seed)
    emotion_dirs = np.random.default_rng(99).standard_normal((4, 256))  # shared by all data
    emotion_dirs *= emotion_scale / np.linalg.norm(emotion_dirs, axis=1, keepdims=True)
    rows, spk, emo = [], [], []
    for s in range(n_speakers):
        centre = rng.standard_normal(256)
        centre *= 1.0 / np.linalg.norm(centre)
        for e in range(4):
            rows.append(centre + emotion_dirs[e] + 0.15 * rng.standard_normal((per_cell, 256))
                        / np.sqrt(256) * 4)
            spk += [f"s{seed}_{s}"] * per_cell
            emo += [e] * per_cell
    return np.concatenate(rows), np.array(spk), np.array(emo)


def test_projection_recovers_speakers_not_emotions() -> None:
    src_x, src_s, src_e = _synthetic(14, 10, seed=1)
    x, spk, emo = _synthetic(4, 15, seed=2)
    plain = estimate_speakers(x, seed=0)
    plain_scores = cluster_scores(plain.speakers, spk, emo)
    assert plain_scores["nmi_emotion"] > 0.5  # the trap: plain clusters follow emotion
    source = {"source_embeddings": src_x, "source_speakers": src_s, "source_labels": src_e}
    est = estimate_speakers(x, **source, seed=0)
    scores = cluster_scores(est.speakers, spk, emo)
    # default: possibly coarser than the truth, but every speaker wholly in one group and no
    # group made of one emotion
    assert est.fallback is None and 2 <= est.count <= 4
    for s in np.unique(spk):
        assert len(set(est.speakers[spk == s])) == 1
    assert scores["nmi_emotion"] < 0.05
    # taking the best k (no preference for coarse groups) finds the four speakers exactly
    best = estimate_speakers_with(x, ClusterConfig(coarse_tolerance=1.0), **source, seed=0)
    best_scores = cluster_scores(best.speakers, spk, emo)
    assert best.count == 4 and best_scores["purity"] == 1.0
    assert best_scores["nmi_emotion"] < 0.05
    assert est.speakers.dtype == object and est.speakers[0] == "spk01"
    json.dumps(est.details)  # JSON-serialisable
    assert est.details["projection"]["emotion_dims_removed"] == 3
    again = estimate_speakers(x, **source, seed=0)
    np.testing.assert_array_equal(again.speakers, est.speakers)
    assert again.details == est.details


def test_one_speaker_folder_is_not_split_by_emotion() -> None:
    src_x, src_s, src_e = _synthetic(14, 10, seed=1)
    x, spk, emo = _synthetic(1, 30, seed=4)
    plain = estimate_speakers(x, seed=0)
    assert plain.count >= 2  # raw embeddings: emotion looks like speakers
    assert cluster_scores(plain.speakers, spk, emo)["nmi_emotion"] > 0.5
    est = estimate_speakers(x, source_embeddings=src_x, source_speakers=src_s,
                            source_labels=src_e, seed=0)
    assert est.count == 1 and "no cluster structure" in est.fallback


def test_fallback_on_too_few_utterances() -> None:
    x, _, _ = _synthetic(2, 3, seed=3)  # 24 utterances < 2 x 16
    est = estimate_speakers(x, min_cluster_size=16)
    assert est.count == 1 and est.fallback is not None and "fewer than" in est.fallback
    assert set(est.speakers) == {"spk01"} and len(est.speakers) == len(x)


def test_fallback_on_structureless_data() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 256))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    est = estimate_speakers(x, seed=0)
    assert est.count == 1 and est.fallback is not None and "no cluster structure" in est.fallback
    # plain silhouette maximisation (the baseline) always splits, even without structure
    base = estimate_speakers_with(x, ClusterConfig(k_rule="silhouette"), seed=0)
    assert base.count >= 2 and base.fallback is None
    # ... while two clear groups are found
    y = np.concatenate([x[:100] + np.eye(256)[0], x[100:] - np.eye(256)[0]])
    two = estimate_speakers(y, seed=0)
    assert two.count == 2 and cluster_scores(two.speakers, np.repeat([0, 1], 100),
                                             np.zeros(200))["purity"] == 1.0


def test_input_errors_are_config_errors() -> None:
    x = np.zeros((40, 8))
    with pytest.raises(EmobridgeError, match="all three"):
        estimate_speakers(x, source_embeddings=x)
    with pytest.raises(EmobridgeError, match="NaN"):
        estimate_speakers(np.full((40, 8), np.nan))
    with pytest.raises(EmobridgeError, match="min_cluster_size"):
        estimate_speakers(x, min_cluster_size=0)


def test_cluster_scores() -> None:
    spk = np.array(["a"] * 4 + ["b"] * 4)
    emo = np.array([0, 1] * 4)
    perfect = cluster_scores(np.array(["x"] * 4 + ["y"] * 4), spk, emo)
    assert perfect["purity"] == 1.0 and perfect["nmi_speaker"] == pytest.approx(1.0)
    assert perfect["nmi_emotion"] == pytest.approx(0.0)
    by_emotion = cluster_scores(emo.astype(str), spk, emo)
    assert by_emotion["purity"] == 0.5 and by_emotion["nmi_emotion"] == pytest.approx(1.0)
