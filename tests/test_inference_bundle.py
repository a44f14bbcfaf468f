"""Model bundles: round trip per registered method, tampering and format checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emobridge.errors import EmobridgeError, OutputError
from emobridge.inference.bundle import FORMAT_VERSION, load_bundle, save_bundle
from emobridge.methods import available_methods, build_method
from emobridge.methods.neural import NeuralMethod
from tests.test_methods_baselines import gaussians

torch.set_num_threads(1)

EXTRACTOR = "logmel:n_mels=8"


def fit_tiny(name: str):
    """``name`` fitted in well under a second on 8-dim Gaussian vectors."""
    cls = available_methods()[name]
    if name == "random_forest":
        params = {"n_estimators": 5}
    elif name == "recommended":  # 8 dims: two views of 4
        params = {"views": 2, "min_speaker_utterances": 2}
    else:
        params = {"epochs": 2, "batch_size": 16, "device": "cpu", "seed": 0}
        if "pretrain_epochs" in cls.param_names():
            params["pretrain_epochs"] = 1
        if name == "mmd":
            params["backbone"] = "mlp"
    source = gaussians(32, 0, dims=8)
    target = gaussians(24, 1, dims=8, language="it", shift=0.3)
    labelled = target if cls.needs_target_labels else target.subset(range(8))
    method = build_method(name, **params)
    method.fit(source, target.without_labels(), labelled, validation=None)
    return method


# recommended_tuned reads Whisper frames: its round trip is in test_tuned_recipe.py
@pytest.mark.parametrize("name", sorted(set(available_methods()) - {"recommended_tuned"}))
def test_round_trip_gives_identical_probabilities(tmp_path, name):
    method = fit_tiny(name)
    folder = save_bundle(method, tmp_path / "b", extractor=EXTRACTOR,
                         training={"corpora": ["gauss"]})
    meta = json.loads((folder / "bundle.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["method"]["name"] == name
    assert meta["classes"] == list(method.classes_)
    assert meta["extractor"]["name"] == "logmel" and meta["feature_id"].startswith("logmel-")
    assert set(meta["files"]) == {"model.safetensors"}
    assert not list(folder.glob("*.pt")) and not list(folder.glob("*.pkl"))
    bundle = load_bundle(folder)
    test = gaussians(12, 2, dims=8, language="it")
    np.testing.assert_array_equal(bundle.method.predict_proba(test),
                                  method.predict_proba(test))
    assert bundle.card["training"] == {"corpora": ["gauss"]}


def test_tampered_weights_rejected(tmp_path):
    folder = save_bundle(fit_tiny("source_only"), tmp_path / "b", extractor=EXTRACTOR)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(EmobridgeError, match="model.safetensors: checksum mismatch"):
        load_bundle(folder)
    weights.unlink()
    with pytest.raises(EmobridgeError, match="model.safetensors: file of the bundle is missing"):
        load_bundle(folder)


def test_wrong_format_version_and_not_a_bundle(tmp_path):
    folder = save_bundle(fit_tiny("random_forest"), tmp_path / "b", extractor=EXTRACTOR)
    meta = json.loads((folder / "bundle.json").read_text())
    (folder / "bundle.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(EmobridgeError, match="format version 99"):
        load_bundle(folder)
    (folder / "bundle.json").write_text(json.dumps({**meta, "files": {"../x": "0"}}))
    with pytest.raises(EmobridgeError, match="bad file name"):
        load_bundle(folder)
    (folder / "bundle.json").write_text("{not json")
    with pytest.raises(EmobridgeError, match="bundle.json: unreadable"):
        load_bundle(folder)
    (folder / "bundle.json").write_text("[" * 100_000 + "]" * 100_000)  # too deep for json
    with pytest.raises(EmobridgeError, match="bundle.json: unreadable .*nested too deeply"):
        load_bundle(folder)
    with pytest.raises(EmobridgeError, match="not a model bundle"):
        load_bundle(tmp_path)
    with pytest.raises(EmobridgeError, match="not found"):
        load_bundle(tmp_path / "missing")


def test_wrong_json_types_are_one_line_refusals(tmp_path):
    """Found by the fuzz tests: null or mistyped keys of bundle.json crashed deep inside
    loading (AttributeError, KeyError) instead of naming the key."""
    folder = save_bundle(fit_tiny("recommended"), tmp_path / "b", extractor=EXTRACTOR)
    meta = json.loads((folder / "bundle.json").read_text())
    cases = [({"files": None}, "files must be"), ({"classes": []}, "classes must be"),
             ({"method": {**meta["method"], "state": None}}, "method.state must be"),
             ({"method": {"state": meta["method"]["state"]}}, "method.name must be"),
             ({"extractor": "logmel"}, "extractor must be an object"),
             ({"memory": [1]}, "memory must be an object or null"),
             ({"method": {**meta["method"], "state": {**meta["method"]["state"],
                                                      "normaliser": None}}}, "state is incomplete")]
    for change, message in cases:
        (folder / "bundle.json").write_text(json.dumps({**meta, **change}))
        with pytest.raises(EmobridgeError, match=message):
            load_bundle(folder)
    (folder / "bundle.json").write_text(json.dumps({**meta, "card": None, "training": None}))
    assert load_bundle(folder).card["training"] == {}  # optional keys may be null


def test_refuses_a_folder_of_other_files_and_replaces_a_bundle(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    method = fit_tiny("nnpm")
    with pytest.raises(OutputError):
        save_bundle(method, tmp_path / "mine", extractor=EXTRACTOR)
    folder = save_bundle(method, tmp_path / "b", extractor=EXTRACTOR)
    again = save_bundle(method, folder, extractor=EXTRACTOR)  # a bundle is replaced
    loaded = load_bundle(again, device="cpu").method
    test = gaussians(6, 3, dims=8)
    np.testing.assert_array_equal(loaded.predict_proba(test), method.predict_proba(test))


def test_crafted_fitted_values_are_refused(tmp_path):
    folder = save_bundle(fit_tiny("nnpm"), tmp_path / "b", extractor=EXTRACTOR)
    meta = json.loads((folder / "bundle.json").read_text())
    assert meta["method"]["state"]["fitted"]["n_memory_slots_"] == 32
    for bad in ({"__class__": "x"}, {"_private": 1}, {"model_": {"a": 1}}):
        meta["method"]["state"]["fitted"] = bad
        (folder / "bundle.json").write_text(json.dumps(meta))
        with pytest.raises(EmobridgeError, match="refusing fitted value"):
            load_bundle(folder)


def test_a_method_leaves_bundles_to_the_bundle_layer(tmp_path):
    model = fit_tiny("source_only")
    folder = save_bundle(model, tmp_path / "b", extractor="logmel:preset=byols,n_mels=16")
    with pytest.raises(EmobridgeError, match="is a model bundle, not a saved method"):
        NeuralMethod.load(folder)
    assert type(load_bundle(folder).method).__name__ == type(model).__name__
