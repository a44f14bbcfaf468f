"""Semi-supervised pseudo-labelling (Agarla et al.): pure parts, then the method end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emobridge.errors import ConfigError, EmobridgeError, SpeakerLeakError
from emobridge.methods import EmotionData, build_method
from emobridge.methods import pseudo_label_ops as ops
from emobridge.methods.pseudo_label import PseudoLabel
from emobridge.metrics import unweighted_average_recall

# ---------------------------------------------------------------- confidence filter


def test_confidence_mask_keeps_rows_at_or_above_tau():
    proba = np.array([[0.5, 0.3, 0.2],     # exactly tau: kept (>=)
                      [0.49, 0.26, 0.25],  # just below
                      [0.1, 0.8, 0.1],
                      [0.34, 0.33, 0.33]])
    assert ops.confidence_mask(proba, 0.5).tolist() == [True, False, True, False]
    assert ops.confidence_mask(proba, 0.85).tolist() == [False, False, False, False]
    index, labels = ops.hard_pseudo_labels(proba, 0.5)
    assert index.tolist() == [0, 2]
    assert labels.tolist() == [0, 1]


def test_confidence_filter_rejects_bad_input():
    with pytest.raises(ConfigError, match="tau"):
        ops.confidence_mask(np.eye(2), 1.0)
    with pytest.raises(EmobridgeError, match="sum to 1"):
        ops.confidence_mask(np.array([[0.9, 0.9]]), 0.5)
    index, labels = ops.hard_pseudo_labels(np.zeros((0, 3)), 0.5)
    assert index.size == 0 and labels.size == 0


# ---------------------------------------------------------------- oversampling


@pytest.mark.parametrize("n_items,n_wanted", [(25, 700), (7, 7), (3, 10), (100, 1682)])
def test_oversampling_counts(n_items, n_wanted):
    index = ops.oversample_indices(n_items, n_wanted, np.random.default_rng(0))
    assert len(index) == n_wanted
    counts = np.bincount(index, minlength=n_items)
    # every utterance kept, replicated floor or ceil of the ratio times
    assert counts.min() == n_wanted // n_items
    assert counts.max() == math.ceil(n_wanted / n_items)
    assert (counts == counts.max()).sum() == (n_wanted % n_items or n_items)


def test_oversampling_never_drops_or_shrinks():
    index = ops.oversample_indices(50, 20, np.random.default_rng(0))
    assert sorted(index.tolist()) == list(range(50))
    assert ops.oversample_indices(0, 20, np.random.default_rng(0)).size == 0


def test_oversampling_is_random_but_seeded():
    a = ops.oversample_indices(10, 25, np.random.default_rng(1))
    b = ops.oversample_indices(10, 25, np.random.default_rng(1))
    c = ops.oversample_indices(10, 25, np.random.default_rng(2))
    assert a.tolist() == b.tolist()
    assert sorted(a.tolist()) != sorted(c.tolist()) or a.tolist() != c.tolist()


# ---------------------------------------------------------------- regularisers, by hand


def _logits(proba: list[list[float]]) -> torch.Tensor:
    return torch.log(torch.tensor(proba, dtype=torch.float64))


def test_prior_regulariser_matches_hand_computation():
    proba = [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]
    hbar = [(0.7 + 0.1) / 2, (0.2 + 0.6) / 2, (0.1 + 0.3) / 2]  # 0.4, 0.4, 0.2
    expected = sum((1 / 3) * math.log((1 / 3) / h) for h in hbar)
    got = ops.prior_regulariser(_logits(proba)).item()
    assert got == pytest.approx(expected, abs=1e-9)
    assert expected > 0
    # a batch whose mean is the uniform prior costs nothing
    balanced = [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]
    assert ops.prior_regulariser(_logits(balanced)).item() == pytest.approx(0.0, abs=1e-12)


def test_entropy_regulariser_matches_hand_computation():
    proba = [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]
    ent = [-sum(p * math.log(p) for p in row) for row in proba]
    assert ops.entropy_regulariser(_logits(proba)).item() == pytest.approx(sum(ent) / 2)
    assert ops.entropy_regulariser(_logits(proba), "sum").item() == pytest.approx(sum(ent))
    # a uniform row has the maximum entropy log C
    assert ops.entropy_regulariser(_logits([[0.25] * 4])).item() == pytest.approx(math.log(4))


def test_total_loss_is_ce_plus_weighted_regularisers():
    proba = [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]], dtype=torch.float64)
    ce = (-math.log(0.7) + -(0.5 * math.log(0.6) + 0.5 * math.log(0.3))) / 2
    hbar = [0.4, 0.4, 0.2]
    r_a = sum((1 / 3) * math.log((1 / 3) / h) for h in hbar)
    r_h = sum(-sum(p * math.log(p) for p in row) for row in proba) / 2
    got = ops.semi_supervised_loss(_logits(proba), targets, 0.8, 0.4)["loss"].item()
    assert got == pytest.approx(ce + 0.8 * r_a + 0.4 * r_h)
    assert ops.semi_supervised_loss(_logits(proba), targets, 0.0, 0.0)["loss"].item() == \
        pytest.approx(ce)


# ---------------------------------------------------------------- mixup


def test_mixup_is_a_convex_combination_with_uniform_alpha():
    x = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    y = torch.eye(4)
    rng = np.random.default_rng(0)
    alphas = []
    for _ in range(200):
        mx, my, _, alpha = ops.mixup(x, y, rng)
        alphas.append(alpha)
        assert 0.0 <= alpha < 1.0
        assert torch.allclose(my.sum(dim=1), torch.ones(4))
        # each mixed target puts weight alpha on the row itself (1 when paired with itself)
        diag = my.diagonal()
        assert torch.all(((diag - alpha).abs() < 1e-6) | ((diag - 1).abs() < 1e-6))
        partner = (my - alpha * y).argmax(dim=1)
        assert torch.allclose(mx, alpha * x + (1 - alpha) * x[partner], atol=1e-5)
    # alpha ~ U(0, 1): roughly uniform, not a Beta(a, a) concentrated at the ends
    assert 0.4 < float(np.mean(alphas)) < 0.6
    assert 0.15 < float(np.mean(np.array(alphas) < 0.3)) < 0.45


def test_mixup_rejects_mismatched_batch():
    with pytest.raises(EmobridgeError, match="targets"):
        ops.mixup(torch.zeros(3, 2), torch.zeros(2, 2), np.random.default_rng(0))


def test_mixup_of_frame_crops_keeps_frames_of_either_partner():
    x = torch.stack([torch.ones(3, 1), torch.zeros(3, 1)])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    rng = np.random.default_rng(3)  # its permutation of 2 rows swaps them
    mx, my, mmask, alpha = ops.mixup(x, torch.eye(2), rng, mask=mask, alpha=0.3)
    assert alpha == 0.3
    assert torch.allclose(my, torch.tensor([[0.3, 0.7], [0.7, 0.3]]))
    assert mmask.tolist() == [[True, True, True], [True, True, True]]
    assert torch.allclose(mx[:, :, 0], torch.tensor([[0.3] * 3, [0.7] * 3]))


# ---------------------------------------------------------------- pseudo-label pool


def test_pool_accumulates_as_a_union_or_replaces():
    eye = np.eye(3, dtype=np.float32)
    idx, tg = ops.update_pseudo_pool(np.zeros(0, int), np.zeros((0, 3)), np.array([0, 1]),
                                     eye[[2, 1]], "accumulate")
    assert idx.tolist() == [0, 1]
    # round 2: utterance 0 same label (no duplicate), 1 new label (added), 2 new utterance
    idx, tg = ops.update_pseudo_pool(idx, tg, np.array([0, 1, 2]), eye[[2, 0, 0]], "accumulate")
    assert idx.tolist() == [0, 1, 1, 2]
    assert tg.argmax(axis=1).tolist() == [2, 1, 0, 0]
    idx, tg = ops.update_pseudo_pool(idx, tg, np.array([2]), eye[[1]], "replace")
    assert idx.tolist() == [2] and tg.argmax(axis=1).tolist() == [1]
    with pytest.raises(ConfigError, match="policy"):
        ops.update_pseudo_pool(idx, tg, idx, tg, "merge")


# ---------------------------------------------------------------- the method on synthetic data

CLASSES = ("anger", "happiness", "neutral", "sadness")


def _domain(rng: np.random.Generator, n_per_class: int, language: str, speakers: list[str],
            shifted: bool, dim: int = 8, frames: int | None = None) -> EmotionData:
    """Class-dependent Gaussians; the target (``shifted``) has its class means rotated 50
    degrees towards the next class and offset, so a source-only model errs on it."""
    feats, labels, spk, ids = [], [], [], []
    theta = np.deg2rad(50)
    for c in range(len(CLASSES)):
        mean = np.zeros(dim)
        if shifted:
            mean[c], mean[(c + 1) % 4] = 3 * np.cos(theta), 3 * np.sin(theta)
            mean += 1.0
        else:
            mean[c] = 3.0
        for i in range(n_per_class):
            if frames is None:
                x = mean + rng.normal(0, 1, dim)
            else:  # variable-length frame sequences around the class mean
                x = mean + rng.normal(0, 1, (int(rng.integers(frames // 2, frames + 1)), dim))
            feats.append(x.astype(np.float32))
            labels.append(c)
            s = speakers[i % len(speakers)]
            spk.append(s)
            ids.append(f"{s}/{CLASSES[c]}_{i}.wav")
    n = len(feats)
    return EmotionData(feats, np.array(labels), np.array(spk, object),
                       np.full(n, language, object), np.array(ids, object), CLASSES)


def _experiment(seed: int = 0, frames: int | None = None):
    rng = np.random.default_rng(seed)
    src = _domain(rng, 50, "en", [f"en:s{i}" for i in range(5)], False, frames=frames)
    src_val = _domain(rng, 15, "en", ["en:v0", "en:v1"], False, frames=frames)
    tgt_train = _domain(rng, 50, "de", [f"de:s{i}" for i in range(4)], True, frames=frames)
    tgt_val = _domain(rng, 15, "de", ["de:v0", "de:v1"], True, frames=frames)
    tgt_test = _domain(rng, 25, "de", ["de:t0", "de:t1"], True, frames=frames)
    # k = 25 labelled target utterances, stratified (7/6/6/6), the rest unlabelled
    few = np.concatenate([np.flatnonzero(tgt_train.labels == c)[:7 if c == 0 else 6]
                          for c in range(4)])
    rest = np.setdiff1d(np.arange(len(tgt_train)), few)
    return {"source": src, "validation": EmotionData.concat([src_val, tgt_val]),
            "labelled": tgt_train.subset(few), "unlabelled": tgt_train.subset(rest),
            "test": tgt_test, "target_train": tgt_train}


@pytest.fixture(scope="module")
def exp():
    torch.set_num_threads(1)
    return _experiment()


def _method(**params) -> PseudoLabel:
    base = dict(epochs=30, pseudo_label_every_epochs=10, lr=1e-2, batch_size=50,
                backbone_params={"hidden_dims": [32]}, device="cpu", seed=0)
    return PseudoLabel(**{**base, **params})


def _ua(method, data):
    return unweighted_average_recall(data.labels, method.predict(data))


def test_registered_with_the_papers_defaults():
    method = build_method("pseudo_label")
    assert isinstance(method, PseudoLabel)
    p = method.get_params()
    assert (p["mode"], p["tau"], p["pseudo_label_every_epochs"], p["epochs"]) == \
        ("hard", 0.5, 30, 100)
    assert (p["lambda_a"], p["lambda_h"], p["batch_size"], p["lr"]) == (0.8, 0.4, 100, 1e-3)
    assert (p["lr_decay_gamma"], p["lr_decay_every_epochs"], p["crop_s"]) == (0.95, 10, 2.0)
    assert p["rebalance"] is True and p["pseudo_label_policy"] == "accumulate"


def test_few_labels_plus_pseudo_labels_beat_source_only(exp):
    lower = _method(pseudo_label_every_epochs=0).fit(exp["source"], None, None,
                                                     exp["validation"])
    adapted = _method().fit(exp["source"], exp["unlabelled"], exp["labelled"],
                            exp["validation"])
    proba = adapted.predict_proba(exp["test"])
    assert proba.shape == (len(exp["test"]), 4)
    assert np.all(proba >= 0) and np.allclose(proba.sum(axis=1), 1.0)
    assert adapted.embed(exp["test"]).shape == (len(exp["test"]), 32)
    ua_lower, ua_adapted = _ua(lower, exp["test"]), _ua(adapted, exp["test"])
    assert ua_adapted > ua_lower + 0.1, (ua_lower, ua_adapted)
    # rounds after epochs 10, 20, 30; per-epoch source and target validation UA
    assert [r["epoch"] for r in adapted.pseudo_label_rounds_] == [10, 20, 30]
    assert len(adapted.history_) == 30
    for record in adapted.history_:
        assert 0 <= record["val_ua_source"] <= 1 and 0 <= record["val_ua_target"] <= 1
        assert record["val_ua"] == pytest.approx(
            (record["val_ua_source"] + record["val_ua_target"]) / 2)
    best = adapted.train_result_.best_epoch
    assert adapted.train_result_.best_score == max(r["val_ua"] for r in adapted.history_)
    assert adapted.history_[best - 1]["val_ua"] == adapted.train_result_.best_score


def test_pseudo_labels_come_only_from_target_unlabelled(exp):
    method = _method().fit(exp["source"], exp["unlabelled"], exp["labelled"],
                           exp["validation"])
    pseudo = set(method.pseudo_labelled_ids_)
    assert pseudo, "nothing was pseudo-labelled: the test would prove nothing"
    assert pseudo <= set(exp["unlabelled"].ids)
    assert not pseudo & set(exp["validation"].ids)
    assert not pseudo & set(exp["test"].ids)
    assert not pseudo & set(exp["labelled"].ids)
    speakers = {i.split("/")[0] for i in pseudo}
    assert speakers <= {f"de:s{i}" for i in range(4)}
    # utterances given both as labelled and unlabelled are used as labelled only
    method = _method(epochs=10).fit(exp["source"], exp["target_train"], exp["labelled"],
                                    exp["validation"])
    assert method.pseudo_labelled_ids_.size
    assert not set(method.pseudo_labelled_ids_) & set(exp["labelled"].ids)


def test_validation_speakers_in_the_unlabelled_pool_raise(exp):
    leaky = EmotionData.concat([exp["unlabelled"], exp["validation"].without_labels()])
    with pytest.raises(SpeakerLeakError, match="de:v0"):
        _method(epochs=2).fit(exp["source"], leaky, exp["labelled"], exp["validation"])


def test_target_labels_of_the_unlabelled_pool_are_never_read(exp):
    a = _method(epochs=12, pseudo_label_every_epochs=5).fit(
        exp["source"], exp["unlabelled"], exp["labelled"], exp["validation"])
    b = _method(epochs=12, pseudo_label_every_epochs=5).fit(
        exp["source"], exp["unlabelled"].without_labels(), exp["labelled"], exp["validation"])
    assert np.array_equal(a.predict_proba(exp["test"]), b.predict_proba(exp["test"]))


@pytest.mark.parametrize("rebalance", [True, False])
def test_rebalancing_counts(exp, rebalance):
    method = _method(epochs=20, rebalance=rebalance).fit(
        exp["source"], exp["unlabelled"], exp["labelled"], exp["validation"])
    n_src, k = len(exp["source"]), len(exp["labelled"])
    sets = method.train_sets_
    assert [s["epoch"] for s in sets] == [0, 10, 20]
    assert sets[0]["n_pseudo"] == 0 and sets[0]["n_target_unique"] == k
    for s in sets:
        assert s["n_target_unique"] == k + s["n_pseudo"]
        want = max(s["n_target_unique"], n_src) if rebalance else s["n_target_unique"]
        assert s["n_target_rows"] == want
        assert s["n_train"] == n_src + want
    assert sets[-1]["n_pseudo"] > 0
    # the epoch records show the size of the set each epoch trained on
    assert [r["n_train"] for r in method.history_[:10]] == [sets[0]["n_train"]] * 10
    assert method.history_[10]["n_train"] == sets[1]["n_train"]


def test_no_target_labels_no_rebalancing_at_start(exp):
    method = _method(epochs=10).fit(exp["source"], exp["unlabelled"], None, exp["validation"])
    first = method.train_sets_[0]
    assert first["n_target_rows"] == 0 and first["n_train"] == len(exp["source"])


def test_hard_pseudo_labels_respect_tau_and_policies(exp):
    strict = _method(epochs=20, tau=0.99).fit(exp["source"], exp["unlabelled"],
                                              exp["labelled"], exp["validation"])
    loose = _method(epochs=20, tau=0.3).fit(exp["source"], exp["unlabelled"],
                                            exp["labelled"], exp["validation"])
    assert strict.pseudo_label_rounds_[0]["n_selected"] < \
        loose.pseudo_label_rounds_[0]["n_selected"]
    replace = _method(epochs=20, pseudo_label_policy="replace").fit(
        exp["source"], exp["unlabelled"], exp["labelled"], exp["validation"])
    rounds = replace.pseudo_label_rounds_
    assert rounds[-1]["n_pool"] == rounds[-1]["n_selected"]
    accumulate = _method(epochs=20).fit(exp["source"], exp["unlabelled"], exp["labelled"],
                                        exp["validation"])
    rounds = accumulate.pseudo_label_rounds_
    assert rounds[-1]["n_pool"] >= max(r["n_selected"] for r in rounds)
    assert np.all(accumulate.pseudo_labels_.sum(axis=1) == 1.0)  # one-hot


def test_soft_mode_trains_with_regularisers_and_mixup(exp):
    method = _method(mode="soft", epochs=12, pseudo_label_every_epochs=5).fit(
        exp["source"], exp["unlabelled"], exp["labelled"], exp["validation"])
    proba = method.predict_proba(exp["test"])
    assert np.allclose(proba.sum(axis=1), 1.0)
    rounds = method.pseudo_label_rounds_
    assert all(r["n_selected"] == len(exp["unlabelled"]) for r in rounds)  # no threshold
    assert rounds[1]["n_pool"] == 2 * len(exp["unlabelled"])  # accumulated soft vectors
    soft = method.pseudo_labels_
    assert np.allclose(soft.sum(axis=1), 1.0) and (soft.max(axis=1) < 1.0).any()
    record = method.history_[0]
    assert record["r_a"] >= 0 and record["r_h"] > 0
    assert record["loss"] > record["ce"]  # the regularisers are part of the loss


def test_determinism(exp):
    runs = [_method(epochs=12, pseudo_label_every_epochs=5, seed=s, mode=m).fit(
        exp["source"], exp["unlabelled"], exp["labelled"], exp["validation"])
        for s, m in ((3, "soft"), (3, "soft"), (4, "soft"))]
    p = [r.predict_proba(exp["test"]) for r in runs]
    assert np.array_equal(p[0], p[1])
    assert [r["epoch"] for r in runs[0].history_] == [r["epoch"] for r in runs[1].history_]
    assert np.array_equal(runs[0].pseudo_labels_, runs[1].pseudo_labels_)
    assert not np.allclose(p[0], p[2])


def test_resume_continues_like_an_uninterrupted_run(exp, tmp_path):
    args = (exp["source"], exp["unlabelled"], exp["labelled"], exp["validation"])
    full = _method(epochs=14, pseudo_label_every_epochs=4).fit(*args)
    _method(epochs=8, pseudo_label_every_epochs=4, checkpoint_dir=str(tmp_path)).fit(*args)
    resumed = _method(epochs=14, pseudo_label_every_epochs=4, checkpoint_dir=str(tmp_path),
                      resume=True).fit(*args)
    assert resumed.train_result_.resumed_from_epoch == 8
    assert [r["epoch"] for r in resumed.pseudo_label_rounds_] == [4, 8, 12]
    assert np.allclose(full.predict_proba(exp["test"]), resumed.predict_proba(exp["test"]),
                       atol=1e-6)


def test_frame_features_are_cropped_by_seconds():
    data = _experiment(frames=40)
    with pytest.raises(ConfigError, match="frame_rate_hz"):
        _method(epochs=2, backbone="mlp").fit(data["source"], data["unlabelled"],
                                              data["labelled"], data["validation"])
    method = _method(epochs=6, pseudo_label_every_epochs=3, mode="soft", backbone="attention",
                     backbone_params={"hidden_dim": 16, "attention_dim": 8},
                     crop_s=0.2, frame_rate_hz=100).fit(
        data["source"], data["unlabelled"], data["labelled"], data["validation"])
    assert method.crop_frames_ == 20
    assert method.train_config().crop_frames == 20
    proba = method.predict_proba(data["test"])  # whole utterances of 20-40 frames
    assert proba.shape == (len(data["test"]), 4) and np.allclose(proba.sum(axis=1), 1.0)


@pytest.mark.parametrize("bad", [dict(mode="medium"), dict(tau=1.5), dict(selection="best"),
                                 dict(pseudo_label_policy="merge"),
                                 dict(pseudo_label_every_epochs=-1), dict(lambda_a=-1.0)])
def test_bad_parameters_raise(exp, bad):
    with pytest.raises(ConfigError):
        _method(epochs=1, **bad).fit(exp["source"], exp["unlabelled"])


def test_save_and_load_round_trip(exp, tmp_path):
    method = _method(epochs=4, pseudo_label_every_epochs=2, mode="soft").fit(
        exp["source"], exp["unlabelled"], exp["labelled"], exp["validation"])
    method.save(tmp_path / "bundle")
    loaded = PseudoLabel.load(tmp_path / "bundle")
    assert isinstance(loaded, PseudoLabel) and loaded.get_params()["mode"] == "soft"
    assert np.allclose(loaded.predict_proba(exp["test"]), method.predict_proba(exp["test"]),
                       atol=1e-6)
