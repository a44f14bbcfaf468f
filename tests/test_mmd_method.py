"""The ``mmd`` method: source fine-tuning, then cross-entropy + lambda * MMD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emobridge.errors import ConfigError
from emobridge.methods import available_methods, build_method
from emobridge.methods.mmd import MMD
from emobridge.methods.neural import NeuralMethod
from tests.test_methods_baselines import gaussians

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::emobridge.errors.EmobridgeWarning")

TINY_VGG = {"depth": 11, "width": 0.125, "image_size": 32, "fc_dim": 16, "pool_size": 1,
            "dropout": 0.0}


def _data():
    source = gaussians(24, 0, frames=True, dims=16)
    target = gaussians(16, 1, frames=True, dims=16, language="it", shift=0.5)
    return source, target


def _mmd(**extra) -> MMD:
    params = {"backbone_params": TINY_VGG, "source_epochs": 2, "epochs": 2, "batch_size": 8,
              "lr": 1e-3, "source_lr": 1e-3, "device": "cpu", **extra}
    return build_method("mmd", **params)


def test_registered_with_the_papers_defaults():
    assert available_methods()["mmd"] is MMD
    m = MMD()
    assert (m.backbone, m.lr, m.source_lr, m.batch_size) == ("vgg", 1e-4, 1e-4, 16)
    assert (m.source_epochs, m.epochs) == (400, 50)
    assert (m.domain_loss, m.domain_loss_layer, m.domain_loss_weight) == ("mmd", "first_fc",
                                                                          1.0)
    assert m.normalise == "none" and not MMD.needs_target_labels


def test_unsupervised_two_phases_never_read_target_labels():
    source, target = _data()
    a = _mmd()
    a.fit(source, target)  # labelled rows passed as unlabelled: hidden
    assert [r["phase"] for r in a.history_] == ["source"] * 2 + ["adapt"] * 2
    assert all("mmd_loss" in r for r in a.history_ if r["phase"] == "adapt")
    assert not any("mmd_loss" in r for r in a.history_ if r["phase"] == "source")
    assert a.source_result_.epochs_run == 2 and a.train_result_.epochs_run == 2
    assert a.domain_layer() is a.model_.backbone.classifier[0]  # VGG's first FC layer
    shuffled = target.subset(np.arange(len(target)))
    shuffled.labels = np.roll(shuffled.labels, 1)
    b = _mmd()
    b.fit(source, shuffled)
    np.testing.assert_array_equal(a.predict_proba(target), b.predict_proba(target))
    assert a.predict_proba(target).shape == (len(target), 4)


def test_k_labelled_target_utterances_enter_the_cross_entropy():
    source, target = _data()
    few = target.subset(np.arange(8))
    wrong = few.subset(np.arange(8))
    wrong.labels = (wrong.labels + 1) % 4
    a, b = _mmd(), _mmd()
    a.fit(source, target.without_labels(), few)
    b.fit(source, target.without_labels(), wrong)
    assert not np.array_equal(a.predict_proba(target), b.predict_proba(target))
    # phase 1 is on the source alone: the same either way
    first = [[r for r in m.history_ if r["phase"] == "source"] for m in (a, b)]
    assert [r["loss"] for r in first[0]] == [r["loss"] for r in first[1]]


def test_mmd_needs_target_data_unless_domain_loss_is_none():
    source, _ = _data()
    with pytest.raises(ConfigError, match="needs target"):
        _mmd().fit(source)
    tl = _mmd(domain_loss="none")
    tl.fit(source)
    assert [r["phase"] for r in tl.history_] == ["source"] * 2 + ["adapt"] * 2
    with pytest.raises(ConfigError, match="source_epochs"):
        _mmd(source_epochs=-1).fit(source)
    scratch = _mmd(source_epochs=0, domain_loss="none")
    scratch.fit(source)
    assert scratch.source_result_ is None and len(scratch.history_) == 2


def test_other_backbones_and_losses(tmp_path):
    source = gaussians(32, 0)
    target = gaussians(24, 1, language="it", shift=0.5)
    m = build_method("mmd", backbone="mlp", backbone_params={"hidden_dims": [8]},
                     domain_loss="coral", source_epochs=1, epochs=2, batch_size=8,
                     device="cpu")
    m.fit(source, target.without_labels())
    assert all("coral_loss" in r for r in m.history_ if r["phase"] == "adapt")
    m.save(tmp_path / "m")
    loaded = NeuralMethod.load(tmp_path / "m")
    assert isinstance(loaded, MMD)
    np.testing.assert_allclose(loaded.predict_proba(target), m.predict_proba(target),
                               atol=1e-6)
