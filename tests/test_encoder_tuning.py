"""Tuning a span of Whisper layers on cached frames, weight deltas, the extractor's ``delta``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from emobridge.cli import main
from emobridge.errors import ConfigError, FeatureError
from emobridge.features.extractors.whisper import WhisperExtractor
from emobridge.fileio import write_arrays
from emobridge.methods import EmotionData
from emobridge.models.layer_delta import apply_delta, read_delta, weight_delta, write_delta
from emobridge.models.whisper_encoder import WhisperEncoder
from emobridge.training.encoder_tuning import span_delta, tune_whisper_layers
from tests.conftest import save_tiny_whisper, voiced_tone

CLASSES = ("anger", "happiness", "neutral", "sadness")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, WhisperEncoder]:
    """A tiny random Whisper (4 layers, 16 dims) saved as a transformers folder."""
    folder = save_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper-4"), encoder_layers=4)
    return folder, WhisperEncoder.from_pretrained(folder)


def _frames(encoder: WhisperEncoder, n: int = 32) -> EmotionData:
    """Labelled frames as the store holds a hidden state's: noise around a class centre."""
    rng = np.random.default_rng(0)
    centres = 2.0 * rng.standard_normal((len(CLASSES), encoder.config.d_model))
    labels = np.arange(n) % len(CLASSES)
    feats = [(centres[y] + rng.standard_normal((10 + 2 * (i % 5), encoder.config.d_model)))
             .astype(np.float32) for i, y in enumerate(labels)]
    return EmotionData(feats, labels, [f"s{i % 4}" for i in range(n)], ["de"] * n,
                       [f"{i}.wav" for i in range(n)], CLASSES)


def test_weight_delta_is_the_truncated_svd_and_applies_in_place():
    gen = torch.Generator().manual_seed(1)
    pre = {"a.weight": torch.randn(12, 8, generator=gen), "a.bias": torch.randn(12, generator=gen)}
    tuned = {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in pre.items()}
    low = weight_delta(tuned, pre, rank=3)
    assert low["a.weight.u"].shape == (12, 3) and low["a.weight.v"].shape == (3, 8)
    assert low["a.bias"].shape == (12,)  # vectors stay whole
    change = (tuned["a.weight"] - pre["a.weight"]).numpy()
    s = np.linalg.svd(change, compute_uv=False)
    error = np.linalg.norm(change - low["a.weight.u"] @ low["a.weight.v"])
    assert error == pytest.approx(np.sqrt(np.sum(s[3:] ** 2)), rel=1e-4)  # Eckart-Young
    module = torch.nn.Linear(8, 12)
    module.load_state_dict({"weight": pre["a.weight"], "bias": pre["a.bias"]})
    apply_delta(module, {k.removeprefix("a."): v for k, v in weight_delta(tuned, pre, None)
                         .items()})
    torch.testing.assert_close(module.weight.detach(), tuned["a.weight"])
    with pytest.raises(Exception, match="rank must be"):
        weight_delta(tuned, pre, rank=0)


def test_tuning_learns_changes_only_the_span_and_is_deterministic(tiny):
    _, encoder = tiny
    data = _frames(encoder)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    span = tune_whisper_layers(encoder, data, 2, 3, epochs=4, lr_layers=1e-3, lr_heads=1e-2)
    for k, v in encoder.state_dict().items():  # the encoder itself is untouched
        assert torch.equal(v, before[k]), k
    logits = torch.cat([span(torch.from_numpy(f)[None]) for f in data.features])
    accuracy = float((logits.argmax(1).numpy() == data.labels).mean())
    assert accuracy >= 0.75  # four separable classes, chance 0.25
    delta = span_delta(encoder, span, 2, rank=None)
    assert {k.split(".")[1] for k in delta} == {"1", "2"}  # layers 1 and 2 = states 2 and 3
    again = span_delta(encoder, tune_whisper_layers(
        encoder, data, 2, 3, epochs=4, lr_layers=1e-3, lr_heads=1e-2), 2, rank=None)
    for k in delta:
        np.testing.assert_array_equal(delta[k], again[k])


@pytest.mark.parametrize("first, last, match", [(0, 2, "1 <= first"), (2, 4, "< 4"),
                                                (3, 2, "first")])
def test_tuning_refuses_bad_spans_and_inputs(tiny, first, last, match):
    _, encoder = tiny
    with pytest.raises(ConfigError, match=match):
        tune_whisper_layers(encoder, _frames(encoder, 8), first, last, epochs=1)


def test_tuning_refuses_vectors_and_unlabelled_rows(tiny):
    _, encoder = tiny
    data = _frames(encoder, 8)
    vectors = EmotionData([f.mean(0) for f in data.features], data.labels, data.speakers,
                          data.languages, data.ids, CLASSES)
    with pytest.raises(ConfigError, match="frames"):
        tune_whisper_layers(encoder, vectors, 2, 3, epochs=1)
    with pytest.raises(ConfigError, match="label"):
        tune_whisper_layers(encoder, data.without_labels(), 2, 3, epochs=1)


def test_extractor_applies_the_delta_and_keys_it_in_the_id(tiny, tmp_path):
    folder, encoder = tiny
    data = _frames(encoder)
    span = tune_whisper_layers(encoder, data, 2, 3, epochs=2, lr_layers=1e-3)
    path = tmp_path / "tuned.safetensors"
    write_delta(path, span_delta(encoder, span, 2, rank=None), {"layers": "2-3"},
                dtype="float32")
    common = dict(model=str(folder), backend="torch", cpu_bf16="off")
    plain = WhisperExtractor(layer=[2, 3], pooling="mean", **common)
    tuned = WhisperExtractor(layer=[2, 3], pooling="mean", delta=str(path), **common)
    below = WhisperExtractor(layer=1, pooling="none", **common)
    assert tuned.id != plain.id and "delta" in tuned.params()
    wave = voiced_tone(0.6)
    frames = torch.from_numpy(below.extract(wave, 16_000))[None]
    expected = torch.cat(span.pooled(frames, None), dim=1)[0].detach().numpy()
    np.testing.assert_allclose(tuned.extract(wave, 16_000), expected, atol=1e-4, rtol=1e-4)
    assert not np.allclose(plain.extract(wave, 16_000), expected, atol=1e-3)
    moved = tmp_path / "moved.safetensors"
    moved.write_bytes(path.read_bytes())  # the digest, not the path, is the id
    assert WhisperExtractor(layer=[2, 3], pooling="mean", delta=str(moved), **common).id \
        == tuned.id


def _bad_deltas(tmp_path: Path, encoder: WhisperEncoder) -> dict[str, tuple[Path, str]]:
    """Hostile delta files: (path, expected message)."""
    d = encoder.config.d_model
    out = {}

    def put(name: str, arrays: dict, metadata: dict | None = None) -> Path:
        path = tmp_path / f"{name}.safetensors"
        write_arrays(path, arrays, metadata)
        return path

    ok = {"format": "emobridge-weight-delta-1"}
    out["missing"] = (tmp_path / "nowhere.safetensors", "missing")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{{{{")
    out["garbage"] = (tmp_path / "garbage.safetensors", "not a readable safetensors")
    out["no format"] = (put("plain", {"layers.0.fc1.bias": np.zeros(32, np.float32)}),
                        "not a weight delta")
    out["empty"] = (put("empty", {}, ok), "empty")
    out["unknown name"] = (put("unknown", {"decoder.x": np.zeros(3, np.float32)}, ok),
                           "not a parameter")
    out["wrong shape"] = (put("shape", {"layers.0.fc1.bias": np.zeros(5, np.float32)}, ok),
                          "shape")
    out["nan"] = (put("nan", {"layers.0.fc1.bias": np.full(32, np.nan, np.float32)}, ok),
                  "non-finite")
    out["lone factor"] = (put("factor", {"layers.0.fc1.weight.u": np.zeros((32, 2), np.float32)},
                              ok), "factors")
    out["bad factors"] = (put("factors", {"layers.0.fc1.weight.u": np.zeros((32, 2), np.float32),
                                          "layers.0.fc1.weight.v": np.zeros((3, d), np.float32)},
                              ok), "factors")
    os.mkfifo(tmp_path / "fifo.safetensors")
    out["fifo"] = (tmp_path / "fifo.safetensors", "not a regular file")
    return out


def test_hostile_delta_files_fail_with_one_clear_error_and_change_nothing(tiny, tmp_path):
    folder, encoder = tiny
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    for case, (path, message) in _bad_deltas(tmp_path, encoder).items():
        with pytest.raises(FeatureError, match=message) as err:
            ext = WhisperExtractor(model=str(folder), backend="torch", delta=str(path))
            ext.load()  # names, shapes and values are checked against the model on load
        assert str(path) in str(err.value) and "\n" not in str(err.value), case
        if message not in ("missing", "not a readable safetensors", "not a weight delta",
                           "empty", "not a regular file"):
            with pytest.raises(FeatureError):
                apply_delta(encoder, read_delta(path)[0], source=str(path))
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(FeatureError, match="backend='torch'"):
        WhisperExtractor(model="base", backend="ct2", delta=str(tmp_path / "x"))
    with pytest.raises(FeatureError, match="delta must be"):
        WhisperExtractor(model=str(folder), backend="torch", delta="")


def test_a_delta_changed_after_construction_is_refused(tiny, tmp_path):
    folder, encoder = tiny
    span = tune_whisper_layers(encoder, _frames(encoder, 8), 2, 2, epochs=1)
    path = tmp_path / "d.safetensors"
    write_delta(path, span_delta(encoder, span, 2))
    ext = WhisperExtractor(model=str(folder), backend="torch", delta=str(path))
    write_delta(path, span_delta(encoder, span, 2, rank=1))
    with pytest.raises(FeatureError, match="changed since"):
        ext.load()


def test_cli_names_a_bad_delta_in_one_line(tiny, tmp_path, capsys):
    from tests.test_features_cli import _write_manifest

    folder, _ = tiny
    manifest = _write_manifest(tmp_path)
    spec = f"whisper:model={folder},backend=torch,delta={tmp_path / 'nope.safetensors'}"
    code = main(["features", "extract", str(manifest), "--extractor", spec, "-o",
                 str(tmp_path / "store")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "nope.safetensors" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def _labelled_manifest(tmp_path: Path, n: int = 8) -> Path:
    from emobridge.corpora import make_manifest, write_manifest
    from tests.conftest import write_tone

    emotions = ("anger", "happiness", "neutral", "sadness")
    rows = []
    for i in range(n):
        path = write_tone(tmp_path / "audio" / f"u{i}.wav", duration_s=0.4,
                          f0_hz=110 + 30 * (i % 4), seed=i)
        rows.append({"path": str(path), "corpus": "toy", "language": "it",
                     "speaker": f"toy:{i % 2}", "gender": "f", "label": emotions[i % 4],
                     "emotion": emotions[i % 4], "duration_s": 0.4, "sample_rate": 16_000})
    return write_manifest(make_manifest(rows), tmp_path / "manifest.csv")[0]


def test_cli_tune_writes_a_delta_the_extractor_uses(tiny, tmp_path, capsys):
    folder, _ = tiny
    manifest = _labelled_manifest(tmp_path)
    out = tmp_path / "tuned.safetensors"
    args = ["features", "tune", str(manifest), "-o", str(out), "--store",
            str(tmp_path / "store"), "--model", str(folder), "--first", "2", "--last", "3",
            "--epochs", "1", "--rank", "2", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "on 8 utterances" in printed and "dropped" not in printed
    delta, meta = read_delta(out)
    assert meta["hidden_states"] == "2-3" and meta["rank"] == "2" and meta["utterances"] == "8"
    assert delta["layers.1.fc1.weight.u"].shape == (32, 2)
    assert {k.split(".")[1] for k in delta} == {"1", "2"}
    ext = WhisperExtractor(model=str(folder), backend="torch", layer=[2, 3], delta=str(out))
    assert np.isfinite(ext.extract(voiced_tone(0.3), 16_000)).all()


@pytest.mark.parametrize("extra, message", [
    (["--first", "0"], "1 <= first"),
    (["--label-set", "nosuch"], "nosuch"),
    (["--rank", "-1"], "--rank"),
    (["--first", "3", "--last", "2"], "3..2"),
])
def test_cli_tune_refuses_bad_options_in_one_line(tiny, tmp_path, capsys, extra, message):
    folder, _ = tiny
    manifest = _labelled_manifest(tmp_path, 4)
    code = main(["features", "tune", str(manifest), "-o", str(tmp_path / "d.safetensors"),
                 "--store", str(tmp_path / "store"), "--model", str(folder), "--epochs", "1",
                 "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code in (1, 2) and message in err and "Traceback" not in err
    assert not (tmp_path / "d.safetensors").exists()


def test_cli_tune_reports_a_read_only_output_folder(tiny, tmp_path, capsys):
    folder, _ = tiny
    manifest = _labelled_manifest(tmp_path, 4)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code = main(["features", "tune", str(manifest), "-o", str(locked / "d.safetensors"),
                     "--store", str(tmp_path / "store"), "--model", str(folder), "--last",
                     "3", "--epochs", "1", "--no-progress"])
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err.strip()
    if os.geteuid() == 0:  # root writes anyway: then the delta must be complete
        assert code == 0 and read_delta(locked / "d.safetensors")[0]
    else:
        assert code == 1 and "locked" in err and len(err.splitlines()) == 1


def test_a_bundle_carries_its_delta_and_refuses_one_from_outside(tiny, tmp_path):
    import json

    from emobridge.errors import EmobridgeError
    from emobridge.features.registry import build_extractor
    from emobridge.inference.bundle import load_bundle, save_bundle
    from tests.test_inference_bundle import fit_tiny

    folder, encoder = tiny
    span = tune_whisper_layers(encoder, _frames(encoder, 8), 2, 3, epochs=1)
    delta = tmp_path / "tuned.safetensors"
    write_delta(delta, span_delta(encoder, span, 2))
    ext = WhisperExtractor(model=str(folder), backend="torch", layer=[2, 3], delta=str(delta))
    saved = save_bundle(fit_tiny("source_only"), tmp_path / "b", extractor=ext.spec())
    delta.unlink()  # the bundle holds its own copy
    meta = json.loads((saved / "bundle.json").read_text())
    assert meta["extractor"]["params"]["delta"] == "delta.safetensors"
    assert "delta.safetensors" in meta["files"] and meta["feature_id"] == ext.id
    bundle = load_bundle(saved)
    assert build_extractor(bundle.extractor_spec).id == ext.id
    again = save_bundle(bundle.method, tmp_path / "c", extractor=bundle.extractor_spec)
    assert (again / "delta.safetensors").read_bytes() == (saved / "delta.safetensors") \
        .read_bytes()
    plain = save_bundle(bundle.method, again, extractor="logmel:n_mels=8")  # replaced
    assert not (plain / "delta.safetensors").exists()
    for hostile in ("/etc/passwd", "../b/delta.safetensors", "model.json", 3):
        meta["extractor"]["params"]["delta"] = hostile
        (saved / "bundle.json").write_text(json.dumps(meta))
        with pytest.raises(EmobridgeError, match="extractor.params.delta"):
            load_bundle(saved)
