"""``domain_loss`` on every neural method and backbone (MLP, attention head, SNSA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emobridge.errors import ConfigError
from emobridge.methods import available_methods, build_method
from emobridge.methods.neural import NeuralMethod
from emobridge.models.domain_losses import mmd
from tests.test_methods_baselines import TINY_SNSA, gaussians

torch.set_num_threads(1)

TINY_ATTENTION = {"hidden_dim": 8, "attention_dim": 8}


def _data(frames: bool, shift: float = 2.0):
    source = gaussians(48, 0, frames)
    target = gaussians(32, 1, frames, language="it", shift=shift)
    return source, target


@pytest.mark.parametrize("backbone,frames", [("mlp", False), ("attention", True),
                                             ("snsa", True)])
@pytest.mark.parametrize("loss", ["mmd", "coral"])
def test_every_backbone_trains_with_a_domain_loss(backbone, frames, loss):
    source, target = _data(frames)
    params = {"snsa": TINY_SNSA, "attention": TINY_ATTENTION, "mlp": {"hidden_dims": [16]}}
    method = build_method("source_only", backbone=backbone, backbone_params=params[backbone],
                          domain_loss=loss, domain_loss_weight=0.5, epochs=2, batch_size=16,
                          device="cpu")
    method.fit(source, target.without_labels())
    assert method.backbone_ == backbone
    assert all(f"{loss}_loss" in record for record in method.history_)
    assert all(np.isfinite(record[f"{loss}_loss"]) for record in method.history_)
    assert method.predict_proba(target).shape == (len(target), 4)


def _embedding_mmd(method: NeuralMethod, source, target) -> float:
    es = torch.as_tensor(method.embed(source))
    et = torch.as_tensor(method.embed(target))
    return float(mmd(es, et))


def test_mmd_term_brings_the_domains_closer():
    source, target = _data(False, shift=3.0)
    common = {"epochs": 15, "batch_size": 16, "lr": 1e-2, "device": "cpu",
              "normalise": "none", "backbone_params": {"hidden_dims": [16], "dropout": 0.0}}
    plain = build_method("source_only", **common).fit(source, target.without_labels())
    aligned = build_method("source_only", domain_loss="mmd", domain_loss_weight=10.0,
                           **common).fit(source, target.without_labels())
    assert _embedding_mmd(aligned, source, target) < 0.5 * _embedding_mmd(plain, source, target)


@pytest.mark.parametrize("name", ["supervised", "dann", "nnpm", "pseudo_label"])
def test_every_neural_method_accepts_a_domain_loss(name):
    source, target = _data(False)
    extra = {"nnpm": {"pretrain_epochs": 1},
             "pseudo_label": {"pseudo_label_every_epochs": 1, "crop_s": None}}.get(name, {})
    method = build_method(name, domain_loss="coral", epochs=2, batch_size=16, device="cpu",
                          backbone_params={"hidden_dims": [8]}, **extra)
    method.fit(source, target.without_labels(), target.subset(np.arange(8)))
    aligned = [r for r in method.history_ if "coral_loss" in r]
    assert len(aligned) == 2
    if name == "nnpm":  # supervised pre-training is not aligned, the adaptation is
        assert {r.get("phase") for r in aligned} == {"adapt"}
        assert not any("coral_loss" in r for r in method.history_ if r.get("phase") ==
                       "pretrain")


def test_domain_loss_is_a_parameter_of_every_neural_method():
    names = [n for n, cls in available_methods().items() if issubclass(cls, NeuralMethod)]
    assert {"source_only", "dann", "nnpm"} <= set(names)
    for name in names:
        params = available_methods()[name].param_names()
        assert {"domain_loss", "domain_loss_weight", "domain_loss_layer",
                "domain_loss_params"} <= set(params), name


def test_none_adds_nothing():
    source, target = _data(False)
    method = build_method("source_only", epochs=1, batch_size=16, device="cpu")
    method.fit(source, target.without_labels())
    assert not any(k.endswith("_loss") and k != "val_loss" for k in method.history_[0])


def test_first_fc_and_named_layers():
    source, target = _data(False)
    for layer in ("first_fc", "net.1"):
        method = build_method("source_only", domain_loss="mmd", domain_loss_layer=layer,
                              epochs=1, batch_size=16, device="cpu",
                              backbone_params={"hidden_dims": [8, 4]})
        method.fit(source, target.without_labels())
        assert method.domain_layer() is method.model_.backbone.net[int(layer == "net.1")]
        assert np.isfinite(method.history_[0]["mmd_loss"])


def test_domain_loss_errors_are_config_errors():
    source, target = _data(False)
    small = {"epochs": 1, "device": "cpu"}
    with pytest.raises(ConfigError, match="needs target"):
        build_method("source_only", domain_loss="mmd", **small).fit(source)
    with pytest.raises(ConfigError, match="no such module"):
        build_method("source_only", domain_loss="mmd", domain_loss_layer="nope",
                     **small).fit(source, target.without_labels())
    with pytest.raises(ConfigError, match="domain_loss"):
        build_method("dann", domain_loss="wasserstein", **small).fit(source, target)
    with pytest.raises(ConfigError, match="unknown options"):
        build_method("source_only", domain_loss="coral", domain_loss_params={"kernel": "x"},
                     **small).fit(source, target)
    with pytest.raises(ConfigError, match="domain_loss_weight"):
        build_method("source_only", domain_loss="mmd", domain_loss_weight=-1.0,
                     **small).fit(source, target)


@pytest.mark.parametrize("name,extra_passes", [("source_only", 1), ("dann", 0),
                                               ("supervised", 2)])
def test_the_term_reuses_the_methods_own_forward_passes(name, extra_passes, monkeypatch):
    """source_only: its source batch is reused, the target needs a pass of its own; dann has
    both; supervised's pooled stream is neither, so both sides get their own pass."""
    from emobridge.models.heads import MLPHead

    source, target = _data(False)
    few = target.subset(np.arange(8))
    calls = []
    original = MLPHead.forward

    def counted(self, x, mask=None):
        calls.append(len(x))
        return original(self, x, mask)

    monkeypatch.setattr(MLPHead, "forward", counted)
    counts = {}
    for loss in ("none", "mmd"):
        calls.clear()
        build_method(name, domain_loss=loss, epochs=1, batch_size=16, device="cpu",
                     backbone_params={"hidden_dims": [8]}).fit(source, target.without_labels(),
                                                               few)
        counts[loss] = len(calls)
    steps = -(-(len(source) + (len(few) if name == "supervised" else 0)) // 16)
    assert counts["mmd"] - counts["none"] == extra_passes * steps
