"""NNPM: the external memory, the pseudo multilabels, hard negatives, and the method itself.

The memory tests use 4 slots of 2-D unit vectors whose cosines are worked out by hand:

    m0 = (1, 0)   m1 = (0.6, 0.8)   m2 = (0, 1)   m3 = (-1, 0)

    a = (0.8, 0.6) -> cos = ( 0.8, 0.96, 0.6, -0.8)
    b = (-0.6, 0.8) -> cos = (-0.6, 0.28, 0.8,  0.6)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emobridge.errors import ConfigError, EmobridgeError
from emobridge.methods import EmotionData, available_methods, build_method
from emobridge.methods.neural import NeuralMethod
from emobridge.methods.nnpm import NNPM
from emobridge.methods.source_only import SourceOnly
from emobridge.models.memory import (
    ExternalMemory,
    hard_negative_mask,
    linear_beta,
    memory_similarity,
    memory_update,
    memory_vote,
    pseudo_multilabel_loss,
    pseudo_multilabels,
)

M = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
A = [0.8, 0.6]
B = [-0.6, 0.8]
COS_A = [0.8, 0.96, 0.6, -0.8]
COS_B = [-0.6, 0.28, 0.8, 0.6]


def sims() -> torch.Tensor:
    # Scaled copies: the similarity must not depend on the feature norm.
    return memory_similarity(torch.tensor([[3 * A[0], 3 * A[1]], [0.5 * B[0], 0.5 * B[1]]]), M)


def test_similarity_is_cosine_to_every_slot():
    assert torch.allclose(sims(), torch.tensor([COS_A, COS_B]), atol=1e-6)


def test_memory_update_eq3_by_hand():
    old = M[[0, 2]]
    new = torch.tensor([[0.0, 2.0], [5.0, 0.0]])  # normalised: (0, 1) and (1, 0)
    out = memory_update(old, new, beta=0.4)
    # slot 0: 0.4*(0,1) + 0.6*(1,0) = (0.6, 0.4), norm sqrt(0.52)
    # slot 2: 0.4*(1,0) + 0.6*(0,1) = (0.4, 0.6), norm sqrt(0.52)
    r = math.sqrt(0.52)
    assert torch.allclose(out, torch.tensor([[0.6 / r, 0.4 / r], [0.4 / r, 0.6 / r]]), atol=1e-6)
    assert torch.allclose(out.norm(dim=1), torch.ones(2))
    assert torch.equal(memory_update(old, new, beta=0.0), old)  # beta = 0 keeps the slot
    assert torch.allclose(memory_update(old, new, beta=1.0), torch.tensor([[0.0, 1], [1, 0]]))
    with pytest.raises(ConfigError, match="beta"):
        memory_update(old, new, beta=1.5)


def test_linear_beta_schedule():
    assert linear_beta(0, 5, 0.4) == 0.0
    assert linear_beta(2, 5, 0.4) == pytest.approx(0.2)
    assert linear_beta(4, 5, 0.4) == pytest.approx(0.4)
    assert linear_beta(99, 5, 0.4) == pytest.approx(0.4)


def test_external_memory_init_write_and_state():
    mem = ExternalMemory(4, 2)
    mem.initialise(M * torch.tensor([[2.0], [1.0], [3.0], [0.5]]), torch.tensor([0, 1, 1, 0]))
    assert torch.allclose(mem.read(), M, atol=1e-6)  # stored normalised
    mem.write(torch.tensor([0, 2]), torch.tensor([[0.0, 2.0], [5.0, 0.0]]), beta=0.4)
    r = math.sqrt(0.52)
    assert torch.allclose(mem.read()[0], torch.tensor([0.6 / r, 0.4 / r]), atol=1e-6)
    assert torch.allclose(mem.read()[2], torch.tensor([0.4 / r, 0.6 / r]), atol=1e-6)
    assert torch.equal(mem.read()[[1, 3]], M[[1, 3]])  # untouched slots keep their value
    state = mem.state_dict()
    assert set(state) == {"features", "labels"} and state["labels"].tolist() == [0, 1, 1, 0]
    with pytest.raises(ConfigError, match="slot index"):
        mem.write(torch.tensor([4]), torch.ones(1, 2), beta=0.1)
    # gradient flows into the query, not into the memory; a write between the read and
    # backward() must not break autograd (the buffer is replaced, not changed in place)
    h = torch.tensor([A], requires_grad=True)
    s = mem.similarity(h)
    before = mem.read()[1].clone()
    mem.write(torch.tensor([1]), torch.tensor([[1.0, 0.0]]), beta=0.5)
    s.sum().backward()
    assert h.grad is not None and not mem.features.requires_grad
    assert not torch.equal(mem.read()[1], before)


def test_pseudo_multilabels_threshold():
    targets, active = pseudo_multilabels(sims(), gamma=0.75, no_positive="skip")
    assert targets.tolist() == [[1, 1, 0, 0], [0, 0, 1, 0]]
    assert active.tolist() == [True, True]
    targets, active = pseudo_multilabels(sims(), gamma=0.9, no_positive="skip")
    assert targets.tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]
    assert active.tolist() == [True, False]  # b has no slot >= 0.9: left out


def test_pseudo_multilabels_no_positive_policies():
    t, active = pseudo_multilabels(sims(), gamma=0.9, no_positive="top_k", fallback_top_k=2)
    # a keeps its real positive only; b falls back to its 2 nearest slots (0.8, 0.6)
    assert t.tolist() == [[0, 1, 0, 0], [0, 0, 1, 1]] and active.all()
    t, active = pseudo_multilabels(sims(), gamma=0.9, no_positive="negatives_only")
    assert t.tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]] and active.all()
    with pytest.raises(ConfigError, match="no_positive"):
        pseudo_multilabels(sims(), gamma=0.9, no_positive="drop")


def test_hard_negative_selection():
    s = sims()
    t, _ = pseudo_multilabels(s, gamma=0.9, no_positive="top_k", fallback_top_k=1)
    # a: negatives 0 (0.8), 2 (0.6), 3 (-0.8); b: positive 2, negatives 0 (-0.6), 1, 3 (0.6)
    half = hard_negative_mask(s, t, ratio=0.5)  # ceil(1.5) = 2 hardest negatives
    assert half.tolist() == [[True, False, True, False], [False, True, False, True]]
    tiny = hard_negative_mask(s, t, ratio=0.01)  # ceil(0.03) = 1
    assert tiny.tolist() == [[True, False, False, False], [False, False, False, True]]
    every = hard_negative_mask(s, t, ratio=None)  # wo_hl ablation: all negatives
    assert every.tolist() == [[True, False, True, True], [True, True, False, True]]
    with pytest.raises(ConfigError, match="ratio"):
        hard_negative_mask(s, t, ratio=0.0)


def test_pseudo_multilabel_loss_by_hand():
    s = sims()
    t, active = pseudo_multilabels(s, gamma=0.9, no_positive="top_k", fallback_top_k=1)
    neg = hard_negative_mask(s, t, ratio=0.5)
    l_pos, l_neg = pseudo_multilabel_loss(s, t, neg, active)
    # positives: a/m1 (0.96), b/m2 (0.8): mean of 0.04^2 and 0.2^2
    assert l_pos.item() == pytest.approx((0.04**2 + 0.2**2) / 2, abs=1e-6)
    # hard negatives: a: 0.8, 0.6; b: 0.28, 0.6
    assert l_neg.item() == pytest.approx((0.64 + 0.36 + 0.28**2 + 0.36) / 4, abs=1e-6)
    # a skipped row contributes nothing
    t2, active2 = pseudo_multilabels(s, gamma=0.9, no_positive="skip")
    l_pos2, l_neg2 = pseudo_multilabel_loss(s, t2, hard_negative_mask(s, t2, 0.5), active2)
    assert l_pos2.item() == pytest.approx(0.04**2, abs=1e-6)
    assert l_neg2.item() == pytest.approx((0.64 + 0.36) / 2, abs=1e-6)


def test_memory_vote_by_hand():
    labels = torch.tensor([0, 1, 1, 0])
    s = sims()
    p = memory_vote(s, labels, n_classes=2, gamma=0.9, top_k=2, temperature=0.1, smoothing=0.0)
    # a: top-2 = m1 (class 1, weight 1), m0 (class 0, weight exp(-1.6))
    # b: top-2 = m2 (class 1, weight 1), m3 (class 0, weight exp(-2))
    wa, wb = math.exp(-1.6), math.exp(-2.0)
    expected = torch.tensor([[wa / (1 + wa), 1 / (1 + wa)], [wb / (1 + wb), 1 / (1 + wb)]])
    assert torch.allclose(p, expected, atol=1e-5)
    # at least top_k slots above gamma 0.75: all of them vote (a: m0 and m1; b: m2 alone)
    p = memory_vote(s, labels, 2, gamma=0.75, top_k=1, temperature=0.1, smoothing=0.0)
    assert torch.allclose(p[0], expected[0], atol=1e-5)
    assert torch.allclose(p[1], torch.tensor([0.0, 1.0]), atol=1e-6)
    p = memory_vote(s, labels, 3, gamma=0.9, top_k=1, smoothing=1e-3)
    assert torch.allclose(p.sum(dim=1), torch.ones(2)) and (p > 0).all()
    assert p.argmax(dim=1).tolist() == [1, 1]


# --------------------------------------------------------------------------- the method

CLASSES = ("anger", "happiness", "neutral", "sadness")
TINY_SNSA = {"conv_channels": [8, 8], "kernel_size": 3, "lstm_hidden": 8, "lstm_layers": 1,
             "attention_dim": 8}


def gaussian_corpus(n_per_class: int, shift: float, seed: int, language: str,
                    labelled: bool = True, dims: int = 6) -> EmotionData:
    """Frame sequences whose mean depends on the class; ``shift`` moves the whole domain."""
    rng = np.random.default_rng(seed)
    centres = np.eye(len(CLASSES), dims) * 2.0
    feats, labels, speakers = [], [], []
    for c in range(len(CLASSES)):
        for i in range(n_per_class):
            frames = int(rng.integers(10, 18))
            x = centres[c] + shift + 0.7 * rng.standard_normal((frames, dims))
            feats.append(x.astype(np.float32))
            labels.append(c)
            speakers.append(f"{language}{i % 3}")
    n = len(feats)
    data = EmotionData(feats, np.array(labels), np.array(speakers), np.full(n, language),
                       np.array([f"{language}/{k}.wav" for k in range(n)]), CLASSES)
    return data if labelled else data.without_labels()


@pytest.fixture(scope="module")
def corpora():
    torch.set_num_threads(1)
    return gaussian_corpus(8, 0.0, 0, "en"), gaussian_corpus(6, 0.8, 1, "de")


def small_nnpm(**params) -> NNPM:
    defaults = dict(backbone="snsa", backbone_params=TINY_SNSA, pretrain_epochs=3,
                    pretrain_lr=1e-2, epochs=2, lr=1e-3, batch_size=16, gamma=0.5,
                    hard_negative_ratio=0.1, device="cpu", seed=3)
    return NNPM(**{**defaults, **params})


def test_nnpm_fits_and_predicts_valid_probabilities(corpora):
    source, target = corpora
    method = small_nnpm().fit(source, target)
    proba = method.predict_proba(target)
    assert proba.shape == (len(target), len(CLASSES))
    assert np.all(proba >= 0) and np.allclose(proba.sum(axis=1), 1.0)
    memory = method.model_.memory
    assert memory.n_slots == len(source)
    assert torch.allclose(memory.read().norm(dim=1), torch.ones(len(source)), atol=1e-5)
    assert memory.labels.tolist() == source.labels.tolist()
    phases = [r["phase"] for r in method.history_]
    assert phases == ["pretrain"] * 3 + ["adapt"] * 2
    adapt = [r for r in method.history_ if r["phase"] == "adapt"]
    assert adapt[0]["beta"] == 0.0 and adapt[1]["beta"] == pytest.approx(0.4)
    assert all(r["l_pos"] >= 0 and r["l_neg"] >= 0 for r in adapt)
    assert method.embed(target).shape == (len(target), method.model_.embedding_dim)
    for prediction in ("memory_vote", "mix"):
        p = method.set_params(prediction=prediction).predict_proba(target)
        assert np.all(p > 0) and np.allclose(p.sum(axis=1), 1.0)
        assert not np.allclose(p, proba)


def test_nnpm_is_deterministic_and_never_reads_target_labels(corpora):
    source, target = corpora
    a = small_nnpm().fit(source, target).predict_proba(target)
    scrambled = EmotionData(target.features, np.roll(target.labels, 5), target.speakers,
                            target.languages, target.ids, target.classes)
    b = small_nnpm().fit(source, scrambled).predict_proba(target)
    np.testing.assert_array_equal(a, b)
    c = small_nnpm(seed=4).fit(source, target).predict_proba(target)
    assert not np.allclose(a, c)


def test_variants_share_pretraining_and_freeze_convs(corpora):
    source, target = corpora
    frozen = small_nnpm(variant="snsa_f").fit(source, target)
    assert frozen.train_result_ is None and frozen.frozen_layers_ == 0
    full = small_nnpm().fit(source, target)
    assert full.frozen_layers_ == 2
    f_state, n_state = frozen.model_.state_dict(), full.model_.state_dict()
    for key in f_state:  # same seed -> same pre-training; convs frozen during adaptation
        if key.startswith("backbone.conv_layers."):
            assert torch.equal(f_state[key], n_state[key]), key
    assert not torch.equal(f_state["classifier.weight"], n_state["classifier.weight"])
    one = small_nnpm(freeze_conv_layers=1).fit(source, target).model_.state_dict()
    assert torch.equal(one["backbone.conv_layers.0.weight"],
                       f_state["backbone.conv_layers.0.weight"])
    assert not torch.equal(one["backbone.conv_layers.1.weight"],
                           f_state["backbone.conv_layers.1.weight"])
    # wo_sl: no source cross-entropy in phase 2, so the classifier head stays as pre-trained
    wo_sl = small_nnpm(variant="wo_sl").fit(source, target).model_.state_dict()
    assert torch.equal(wo_sl["classifier.weight"], f_state["classifier.weight"])
    key = "backbone.lstm_layers.0.weight_ih_l0"  # ... while the target loss moves the LSTM
    assert not torch.equal(wo_sl[key], f_state[key])
    wo_hl = small_nnpm(variant="wo_hl").fit(source, target)
    assert not np.allclose(wo_hl.predict_proba(target), full.predict_proba(target))


def test_no_positive_skip_gives_zero_target_loss(corpora):
    source, target = corpora
    method = small_nnpm(variant="wo_sl", gamma=1.0, no_positive="skip").fit(source, target)
    adapt = [r for r in method.history_ if r["phase"] == "adapt"]
    assert all(r["l_pos"] == 0.0 and r["l_neg"] == 0.0 for r in adapt)
    assert all(r["target_pos_rate"] == 0.0 for r in adapt)
    fallback = small_nnpm(gamma=1.0, no_positive="top_k").fit(source, target)
    assert all(r["l_pos"] > 0 for r in fallback.history_ if r["phase"] == "adapt")


def test_save_load_and_pretrained(corpora, tmp_path):
    source, target = corpora
    method = small_nnpm(prediction="memory_vote").fit(source, target)
    method.save(tmp_path / "nnpm")
    loaded = NeuralMethod.load(tmp_path / "nnpm")
    assert isinstance(loaded, NNPM) and loaded.model_.memory.n_slots == len(source)
    np.testing.assert_allclose(loaded.predict_proba(target), method.predict_proba(target),
                               atol=1e-6)
    # pretrained: a saved source_only model replaces phase 1
    base = SourceOnly(backbone="snsa", backbone_params=TINY_SNSA, epochs=2, device="cpu",
                      seed=3, batch_size=16).fit(source)
    base.save(tmp_path / "base")
    snsa_f = small_nnpm(variant="snsa_f", pretrained=str(tmp_path / "base")).fit(source, target)
    assert snsa_f.pretrain_result_ is None
    np.testing.assert_allclose(snsa_f.predict_proba(target), base.predict_proba(target),
                               atol=1e-6)
    with pytest.raises(EmobridgeError, match="standardises"):
        small_nnpm(pretrained=str(tmp_path / "base"), normalise="none").fit(source, target)


def test_bad_parameters_and_inputs(corpora):
    source, target = corpora
    with pytest.raises(ConfigError, match="variant"):
        small_nnpm(variant="full").fit(source, target)
    with pytest.raises(ConfigError, match="prediction"):
        small_nnpm(prediction="knn").fit(source, target)
    with pytest.raises(ConfigError, match="freeze_conv_layers"):
        small_nnpm(freeze_conv_layers=3).fit(source, target)
    with pytest.raises(EmobridgeError, match="target"):
        small_nnpm().fit(source)
    assert "nnpm" in available_methods()
    assert build_method("nnpm", gamma=0.8).gamma == 0.8


def test_freeze_conv_layers_on_a_backbone_without_convolutions(corpora):
    source, target = corpora
    vectors = [EmotionData([f.mean(axis=0) for f in d.features], d.labels, d.speakers,
                           d.languages, d.ids, d.classes) for d in (source, target)]
    with pytest.raises(ConfigError, match="freeze_conv_layers=2 .*'mlp' has no convolution"):
        small_nnpm(backbone="mlp", backbone_params={"hidden_dims": [8]},
                   freeze_conv_layers=2).fit(*vectors)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unset: nothing to freeze, nothing to warn about
        method = small_nnpm(backbone="mlp", backbone_params={"hidden_dims": [8]}).fit(*vectors)
    assert method.frozen_layers_ == 0
    assert small_nnpm(freeze_conv_layers=0).fit(source, target).frozen_layers_ == 0
