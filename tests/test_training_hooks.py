"""NeuralMethod's fixed fit sequence (the hooks a method is written on) and scikit-learn
style parameters."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from emobridge.errors import ConfigError, EmobridgeError
from emobridge.methods import EmotionData, available_methods, build_method
from emobridge.methods.neural import NeuralMethod
from emobridge.methods.phases import FitData, Phase

torch.set_num_threads(1)

CLASSES = ("a", "b", "c")


def blobs(n: int, seed: int, language: str, shift: float = 0.0) -> EmotionData:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    feats = [(3.0 * np.eye(3, 5)[y] + shift + 0.5 * rng.normal(size=5)).astype(np.float32)
             for y in labels]
    return EmotionData(feats, labels, [f"{language}{i % 4}" for i in range(n)], [language] * n,
                       [f"{language}/{seed}/{i}" for i in range(n)], CLASSES)


class Recorder(NeuralMethod):
    """A two-phase method that records what each hook saw."""

    name = "recorder"

    alpha = 1.0  # a class attribute: the hooks, not the parameters, are under test

    def check_params(self) -> None:
        self.calls = ["check_params"]
        if self.alpha < 0:
            raise ConfigError(f"recorder: alpha must be >= 0, got {self.alpha}")

    def select_data(self, data: FitData) -> FitData:
        self.calls.append("select_data")
        assert data.target_unlabelled is not None
        self.saw_target_labels = bool((data.target_unlabelled.labels >= 0).any())
        return data

    def fit_normaliser(self, data: FitData):
        self.calls.append("fit_normaliser")
        self.model_built_before_normaliser = hasattr(self, "model_")
        return super().fit_normaliser(data)

    def init_state(self, data: FitData) -> None:
        self.calls.append("init_state")
        self.source_mean = float(np.mean(data.source.stacked()))

    def phases(self, data: FitData):
        self.calls.append("phases")
        yield Phase("warmup", {"source": data.source}, config={"epochs": 1},
                    result_attr="warmup_result_")
        self.calls.append(f"between:{len(self.warmup_result_.history)}")
        yield Phase("adapt", {"source": data.source, "target": data.target},
                    validation=data.validation, result_attr="train_result_")

    def training_step(self, batches, ctx):
        ce = self.supervised_loss(batches["source"])
        return {"loss": self.alpha * ce, "ce": ce.detach()}

    def finish_fit(self, data: FitData) -> None:
        self.calls.append("finish_fit")


def _fit(alpha: float = 1.0) -> Recorder:
    method = Recorder(epochs=2, batch_size=8, lr=1e-2, device="cpu", seed=0)
    method.alpha = alpha
    source, target = blobs(24, 0, "en"), blobs(18, 1, "de", shift=0.5)
    return method.fit(source, target, None, blobs(12, 2, "en"))


def test_fit_runs_the_hooks_in_the_documented_order():
    method = _fit()
    assert method.calls == ["check_params", "select_data", "fit_normaliser", "init_state",
                            "phases", "between:1", "finish_fit"]
    assert method.model_built_before_normaliser
    assert not method.saw_target_labels  # target_unlabelled labels are hidden before hooks
    assert abs(method.source_mean) < 0.5  # init_state sees standardised data
    # history tags each phase; per-phase config overrides apply (warm-up: 1 epoch)
    assert [r["phase"] for r in method.history_] == ["warmup", "adapt", "adapt"]
    assert len(method.warmup_result_.history) == 1 and len(method.train_result_.history) == 2
    assert "val_ua" in method.history_[-1] and "val_ua" not in method.history_[0]
    assert not method.model_.training


def test_check_params_runs_before_anything_else():
    with pytest.raises(ConfigError, match="alpha"):
        _fit(alpha=-1.0)


@pytest.mark.parametrize("name", sorted(available_methods()))
def test_methods_take_explicit_keyword_parameters(name):
    cls = available_methods()[name]
    kinds = {p.kind for p in inspect.signature(cls.__init__).parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds
    method = build_method(name)
    params = method.get_params()
    assert list(params) == cls.param_names()
    assert cls(**params).get_params() == params  # a clone from its parameters
    with pytest.raises(ConfigError, match="unknown parameter"):
        method.set_params(no_such_parameter=1)


def test_param_names_include_the_shared_training_parameters():
    from emobridge.methods.nnpm import NNPM

    names = NNPM.param_names()
    assert names[0] == "variant"
    assert {"gamma", "lr", "epochs", "backbone", "normalise", "seed", "resume"} <= set(names)
    assert NNPM().lr == 1e-4 and NeuralMethod().lr == 1e-3  # per-method defaults kept
    with pytest.raises(TypeError):
        NNPM(0.5)  # keyword-only
    with pytest.raises(EmobridgeError):
        build_method("dann", no_such_parameter=1)


@pytest.mark.parametrize("name,params,match", [
    ("source_only", {"epochs": "abc"}, "epochs='abc'"),
    ("nnpm", {"gamma": "high"}, "gamma='high'"),
    ("pseudo_label", {"rebalance": "yes"}, "rebalance='yes'"),
    ("dann", {"backbone_params": [1, 2]}, "backbone_params"),
])
def test_mistyped_parameters_are_one_line_config_errors(name, params, match):
    method = build_method(name, device="cpu", **params)
    with pytest.raises(ConfigError, match=match) as info:
        method.fit(blobs(12, 0, "en"), blobs(12, 1, "de"))
    assert "\n" not in str(info.value)
