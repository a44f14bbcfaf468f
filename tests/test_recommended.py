"""The recommended recipe: layer ensemble, normalisation choice, self-training, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from emobridge.errors import ConfigError, EmobridgeError, EmobridgeWarning
from emobridge.features.registry import build_extractor
from emobridge.methods import EmotionData, build_method
from emobridge.methods.recommended import RECIPE_FEATURES, Recommended
from emobridge.metrics import unweighted_average_recall

CLASSES = ("anger", "happiness", "neutral", "sadness")


def _domain(rng, lang, speakers, per_class, shift, confound=False, dims=12):
    """Vectors whose class means differ; each speaker adds its own offset; the domain
    adds ``shift``. ``confound``: each speaker records a single class."""
    means = rng.normal(0, 1.5, (4, dims // 3))
    feats, labels, spk = [], [], []
    for s in range(speakers):
        offset = rng.normal(0, 2.0, dims)
        classes = [s % 4] if confound else range(4)
        for c in classes:
            for _ in range(per_class * (4 if confound else 1)):
                x = np.tile(means[c], 3) + offset + shift + rng.normal(0, 0.7, dims)
                feats.append(x.astype(np.float32))
                labels.append(c)
                spk.append(f"{lang}:{s}")
    n = len(feats)
    return EmotionData(feats, np.array(labels), np.array(spk), np.full(n, lang),
                       np.array([f"{lang}{i}" for i in range(n)]), CLASSES), means


def test_recipe_features_build_and_params_are_explicit():
    ext = build_extractor(RECIPE_FEATURES)
    assert ext.params()["level"] == "rms" and ext.params()["layer"] == [2, 3, 4]
    assert build_extractor("whisper:backend=torch,layer=3").id != build_extractor(
        "whisper:backend=torch,layer=3,level=rms").id
    assert "rounds" in Recommended.param_names() and "C" in Recommended.param_names()


def test_self_training_is_used_and_labels_are_not_read():
    rng = np.random.default_rng(0)
    src, _ = _domain(rng, "aa", 8, 10, shift=0.0)
    tgt, _ = _domain(np.random.default_rng(0), "bb", 6, 10, shift=3.0)  # same class means
    hidden = tgt.without_labels()
    method = build_method("recommended").fit(src, hidden)
    assert method.normalisation_ == "per_speaker"
    assert [r["fraction"] for r in method.pseudo_labels_] == [0.2, 0.4, 0.6, 0.8]
    proba = method.predict_proba(tgt)
    assert proba.shape == (len(tgt), 4) and np.allclose(proba.sum(1), 1)
    assert unweighted_average_recall(tgt.labels, proba.argmax(1)) > 0.8
    # labels left on the unlabelled pool change nothing: the recipe never reads them
    again = build_method("recommended").fit(src, tgt)
    assert np.array_equal(again.predict_proba(tgt), proba)


def test_auto_normalisation_refuses_per_speaker_on_confounded_target():
    rng = np.random.default_rng(1)
    src, _ = _domain(rng, "aa", 8, 10, shift=0.0)
    tgt, _ = _domain(np.random.default_rng(1), "bb", 8, 10, shift=1.0, confound=True)
    with pytest.warns(EmobridgeWarning, match="per-speaker normalisation could erase"):
        method = build_method("recommended").fit(src, tgt.without_labels())
    assert method.normalisation_ == "per_corpus"
    report = method.fit_report()
    assert report["normalisation"] == "per_corpus" and report["fell_back"].startswith(
        "the target data")
    assert report["target_speaker_association"] > 0.5 and report[
        "labelled_speaker_association"] < 0.1
    forced = build_method("recommended", normalise="per_speaker").fit(src, tgt.without_labels())
    ua_auto = unweighted_average_recall(tgt.labels, method.predict(tgt))
    ua_forced = unweighted_average_recall(tgt.labels, forced.predict(tgt))
    assert ua_auto > ua_forced + 0.2  # per-speaker z-scoring erased the emotion


def test_entropy_comparison_falls_back_when_the_other_tests_are_off():
    """With the share and association tests switched off, the third compares the two
    self-trained runs: on a target whose speakers each record one class, per-speaker
    statistics subtract the class and leave the model less certain, so the per-corpus run
    is kept, with a warning and both entropies in the report; off (``None``), one run."""
    rng = np.random.default_rng(1)
    src, _ = _domain(rng, "aa", 8, 10, shift=0.0)
    tgt, _ = _domain(np.random.default_rng(1), "bb", 8, 10, shift=1.0, confound=True)
    blind = {"confound_share": 1.0, "confound_association": 1.0}
    with pytest.warns(EmobridgeWarning, match="less certain than the per-corpus one"):
        method = build_method("recommended", **blind).fit(src, tgt.without_labels())
    report = method.fit_report()
    assert method.normalisation_ == report["normalisation"] == "per_corpus"
    assert report["target_entropy_per_speaker"] > 1.03 * report["target_entropy_per_corpus"]
    assert "entropy" in report["fell_back"]
    forced = build_method("recommended", normalise="per_corpus").fit(src, tgt.without_labels())
    assert np.allclose(method.predict_proba(tgt), forced.predict_proba(tgt))
    off = build_method("recommended", confound_entropy=None, **blind).fit(
        src, tgt.without_labels())
    assert off.normalisation_ == "per_speaker"
    assert "target_entropy_per_speaker" not in off.fit_report()
    assert unweighted_average_recall(tgt.labels, method.predict(tgt)) > \
        unweighted_average_recall(tgt.labels, off.predict(tgt)) + 0.2


def test_entropy_comparison_keeps_per_speaker_on_acted_targets():
    """Every speaker shows every class (with its own voice offset): the per-speaker run is
    the more certain one and is kept, silently."""
    import warnings

    rng = np.random.default_rng(0)
    src, _ = _domain(rng, "aa", 8, 10, shift=0.0)
    tgt, _ = _domain(np.random.default_rng(0), "bb", 6, 10, shift=3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmobridgeWarning)
        method = build_method("recommended").fit(src, tgt.without_labels())
    report = method.fit_report()
    assert method.normalisation_ == "per_speaker" and "fell_back" not in report
    assert report["target_entropy_per_speaker"] <= 1.03 * report["target_entropy_per_corpus"]
    saved = Recommended.from_state(*method.get_state())
    assert saved.fit_report()["target_entropy_per_corpus"] == report[
        "target_entropy_per_corpus"]


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), "high"])
def test_bad_entropy_rise_is_a_config_error(value):
    with pytest.raises(ConfigError, match="confound_entropy"):
        build_method("recommended", confound_entropy=value).check_settings()


def test_speaker_association_is_bias_corrected():
    from emobridge.methods.recommended import speaker_association

    rng = np.random.default_rng(5)
    balanced = np.repeat(np.arange(6), 40), np.tile(np.arange(4), 60)
    assert speaker_association(*balanced) == (0.0, 1.0)
    one_each = np.repeat(np.arange(8), 10), np.repeat(np.arange(8) % 4, 10)
    assert speaker_association(*one_each).v > 0.95 and speaker_association(*one_each).p < 1e-6
    # many small speakers with random classes: the raw V is large, the corrected one is not
    speakers, labels = np.repeat(np.arange(60), 8), rng.integers(0, 4, 480)
    assert speaker_association(speakers, labels).v < 0.15
    assert speaker_association(speakers, labels, least=9).v == 0.0  # nobody large enough
    # a strong association in a handful of utterances is not significant
    few = speaker_association(np.repeat([0, 1], 6), np.r_[[0, 0, 0, 0, 1, 2], [1, 1, 1, 1, 0, 3]])
    assert few.v > 0.37 and few.p > 1e-3


def test_association_catches_a_confound_the_top_share_misses():
    """Each speaker keeps 12 of its 21 utterances in one class (rotating): the median top
    share (0.57) stays under ``confound_share``, the association (0.38) does not."""
    rng = np.random.default_rng(6)
    src, _ = _domain(rng, "aa", 8, 10, shift=0.0)
    spk = np.repeat(np.arange(8), 21)
    labels = np.concatenate([np.r_[np.full(12, s % 4), np.repeat(
        [c for c in range(4) if c != s % 4], 3)] for s in range(8)])
    lab = EmotionData(src.features[:len(spk)], labels, spk.astype(str),
                      src.languages[:len(spk)], src.ids[:len(spk)], CLASSES)
    method = build_method("recommended")
    with pytest.warns(EmobridgeWarning, match="Cramer's V"):
        assert method.choose_normalisation([lab], None) == "per_corpus"
    assert method.fit_report()["labelled_top_share"] < 0.6
    assert build_method("recommended", confound_association=0.9).choose_normalisation(
        [lab], None) == "per_speaker"


def test_k_labelled_and_no_target():
    rng = np.random.default_rng(2)
    src, _ = _domain(rng, "aa", 6, 8, shift=0.0)
    tgt, _ = _domain(np.random.default_rng(2), "bb", 4, 8, shift=2.0)
    few = tgt.subset(np.arange(0, len(tgt), 8))
    method = build_method("recommended", rounds=[]).fit(src, None, few)
    assert method.pseudo_labels_ == []
    assert method.predict_proba(tgt).shape == (len(tgt), 4)


def test_bad_inputs_are_one_line_errors():
    rng = np.random.default_rng(3)
    src, _ = _domain(rng, "aa", 4, 4, shift=0.0)
    with pytest.raises(ConfigError, match="do not split into views=5"):
        build_method("recommended", views=5).fit(src)
    with pytest.raises(ConfigError, match="rounds must be fractions"):
        build_method("recommended", rounds=[0.5, 2.0]).fit(src)
    with pytest.raises(EmobridgeError, match="call fit"):
        build_method("recommended").predict_proba(src)


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    src, _ = _domain(rng, "aa", 6, 8, shift=0.0)
    tgt, _ = _domain(np.random.default_rng(4), "bb", 4, 8, shift=2.0)
    method = build_method("recommended").fit(src, tgt.without_labels())
    method.save(tmp_path / "m")
    loaded = Recommended.load(tmp_path / "m")
    assert np.array_equal(loaded.predict_proba(tgt), method.predict_proba(tgt))
    (tmp_path / "m" / "method.json").write_text("{broken")
    with pytest.raises(EmobridgeError, match="method.json: unreadable"):
        Recommended.load(tmp_path / "m")


def _skewed_speakers(rng, lang, speakers, per_speaker, dims=12, dominant=0.7, means=None):
    """Each speaker (own offset) shows mostly one class (``dominant`` share, rotating) but
    every class a little: plain per-speaker statistics subtract part of the emotion."""
    means = rng.normal(0, 1.5, (4, dims)) if means is None else means
    feats, labels, spk = [], [], []
    for s in range(speakers):
        offset = rng.normal(0, 2.0, dims)
        counts = np.full(4, round(per_speaker * (1 - dominant) / 3))
        counts[s % 4] = per_speaker - counts.sum() + counts[s % 4]
        for c, k in enumerate(counts):
            for _ in range(k):
                feats.append((means[c] + offset + rng.normal(0, 0.7, dims)).astype(np.float32))
                labels.append(c)
                spk.append(f"{lang}:{s}")
    n = len(feats)
    return EmotionData(feats, np.array(labels), np.array(spk), np.full(n, lang),
                       np.array([f"{lang}{i}" for i in range(n)]), CLASSES), means


def test_balanced_speaker_statistics_keep_the_dominant_emotion():
    from emobridge.methods.normalise import FeatureNormaliser

    data, means = _skewed_speakers(np.random.default_rng(3), "aa", 8, 40)
    onehot = np.eye(4)[data.labels]
    plain = FeatureNormaliser("per_speaker").fit([data]).transform(data).stacked()
    balanced = FeatureNormaliser("per_speaker").fit([data], [onehot])
    assert set(balanced.speaker_stats_) == set(data.speakers)
    z = balanced.transform(data).stacked()

    def separation(x):  # between-class over within-class spread, pooled over speakers
        centres = np.stack([x[data.labels == c].mean(0) for c in range(4)])
        within = np.mean([x[data.labels == c].var(0).mean() for c in range(4)])
        return centres.var(0).mean() / within

    assert separation(z) > 1.3 * separation(plain)
    # each speaker's class-balanced mean is ~0: the speaker offset is gone, not the emotion
    for s in np.unique(data.speakers):
        rows = data.speakers == s
        class_means = [z[rows & (data.labels == c)].mean(0) for c in range(4)]
        assert np.abs(np.mean(class_means, axis=0)).max() < 0.2
    with pytest.raises(EmobridgeError, match="weight rows"):
        FeatureNormaliser("per_speaker").fit([data], [onehot[:5]])


def test_balanced_statistics_in_the_recipe_beat_plain_on_skewed_target():
    src, means = _skewed_speakers(np.random.default_rng(4), "aa", 8, 40, dominant=0.25)
    tgt, _ = _skewed_speakers(np.random.default_rng(5), "bb", 8, 40, dominant=0.7,
                              means=means + 1.0)  # a shifted domain, the same emotions
    plain = build_method("recommended", normalise="per_speaker").fit(src, tgt.without_labels())
    balanced = build_method("recommended", normalise="per_speaker",
                            speaker_statistics="balanced").fit(src, tgt.without_labels())
    assert len(balanced.normaliser_.speaker_stats_) == 16  # 8 source + 8 target speakers
    ua_plain = unweighted_average_recall(tgt.labels, plain.predict(tgt))
    ua_balanced = unweighted_average_recall(tgt.labels, balanced.predict(tgt))
    assert ua_balanced > ua_plain, (ua_plain, ua_balanced)
