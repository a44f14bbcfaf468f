"""``emobridge train`` end to end: generated audio -> manifests -> feature store -> metrics."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from emobridge.cli import main
from emobridge.corpora.manifest import make_manifest, write_manifest
from emobridge.features import FeatureStore
from emobridge.inference.bundle import load_bundle
from emobridge.methods import build_method
from emobridge.methods.runner import load_experiment_data
from tests.conftest import write_tone

torch.set_num_threads(1)

EXTRACTOR = "logmel:preset=byols,n_mels=16,n_fft=512,win_length_samples=400," \
            "hop_length_samples=320"
# Emotion -> pitch: trivially separable by the spectrum whatever the "language".
PITCH_HZ = {"anger": 320.0, "happiness": 240.0, "neutral": 120.0, "sadness": 170.0}
TINY = ["epochs=25", "lr=0.01", "batch_size=8", "backbone=attention",
        'backbone_params={"hidden_dim": 16, "attention_dim": 8, "dropout": 0.0}']


def _corpus(root: Path, corpus: str, language: str, n_speakers: int = 5) -> Path:
    rows = []
    for s in range(n_speakers):
        gender = "f" if s % 2 else "m"
        for emotion, f0 in PITCH_HZ.items():
            for k in range(2):
                path = root / corpus / f"s{s}_{emotion}_{k}.wav"
                seed = hash((corpus, s, emotion, k)) % 2**31
                write_tone(path, duration_s=0.3, f0_hz=f0 * (1 + 0.03 * s), seed=seed)
                rows.append({"path": str(path), "corpus": corpus, "language": language,
                             "speaker": f"{corpus}:{s}", "gender": gender, "label": emotion,
                             "emotion": emotion, "duration_s": 0.3, "sample_rate": 16000})
    manifest = make_manifest(rows)
    written = write_manifest(manifest, root / f"{corpus}.csv")
    return Path(written[0]) if isinstance(written, list) else root / f"{corpus}.csv"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_train")
    src = _corpus(root, "srccorp", "de")
    tgt = _corpus(root, "tgtcorp", "it")
    store = FeatureStore(root / "store")
    for manifest in (src, tgt):
        store.extract(manifest, EXTRACTOR, progress=False)
    return root, src, tgt


def _args(root, src, tgt, out, *extra):
    args = ["train", "--source", str(src), "--target", str(tgt), "--store",
            str(root / "store"), "--extractor", EXTRACTOR, "--out", str(out), "--seed", "1",
            "--device", "cpu", "--method", "source_only"]  # a later --method wins
    for p in TINY:
        args += ["--param", p]
    return args + list(extra)


def test_train_writes_metrics_config_predictions_and_model(experiment):
    root, src, tgt = experiment
    out = root / "run_dann"
    assert main(_args(root, src, tgt, out, "--method", "dann", "--param",
                      "domain_weight=0.5")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert metrics["method"] == "dann" and metrics["test"]["ua"] > 0.9
    assert len(metrics["history"]) <= 25 and metrics["best_epoch"] >= 1
    assert config["params"]["domain_weight"] == 0.5 and config["params"]["seed"] == 1
    assert config["environment"]["emobridge"]
    speakers = config["data"]
    test_spk = set(speakers["test"]["speakers"])
    assert test_spk and not test_spk & set(speakers["target_unlabelled"]["speakers"])
    assert not test_spk & set(speakers["validation"]["speakers"])
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == metrics["test"]["n"]
    assert {r["speaker"] for r in rows} == test_spk
    assert len(list(csv.DictReader((out / "history.csv").open()))) == len(metrics["history"])
    # The saved model reproduces the written predictions.
    model = load_bundle(out / "model", device="cpu").method
    data = load_experiment_data(src, tgt, root / "store", EXTRACTOR, seed=1)
    proba = model.predict_proba(data.test)
    np.testing.assert_allclose(proba[:, 0], [float(r["p_anger"]) for r in rows], atol=1e-5)


def test_same_seed_same_metrics_and_supervised_gets_target_labels(experiment):
    root, src, tgt = experiment
    outs = [root / "so_a", root / "so_b"]
    for out in outs:
        assert main(_args(root, src, tgt, out, "--method", "source_only")) == 0
    a, b = (json.loads((o / "metrics.json").read_text()) for o in outs)
    assert a["test"] == b["test"]
    out = root / "sup"
    assert main(_args(root, src, tgt, out, "--method", "supervised")) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["target_labelled"]["utterances"] == \
        config["data"]["target_unlabelled"]["utterances"] > 0


def test_few_shot_and_errors(experiment, capsys):
    root, src, tgt = experiment
    data = load_experiment_data(src, tgt, root / "store", EXTRACTOR, seed=0,
                                target_labelled_k=4, validation="source")
    assert len(data.target_labelled) == 4 and data.target_labelled.is_labelled
    assert set(data.validation.languages) == {"de"}  # held-out source speakers
    assert not set(data.validation.speakers) & set(data.source.speakers)
    method = build_method("source_only", epochs=1, device="cpu", backbone="attention")
    assert method.fit(data.source).predict(data.test).shape == (len(data.test),)

    assert main(_args(root, src, tgt, root / "bad", "--method", "nope")) == 1
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(_args(root, src, tgt, root / "bad", "--param", "epochz=3")) == 1
    assert "unknown parameters ['epochz']" in capsys.readouterr().err
    assert main(_args(root, src, tgt, root / "bad", "--extractor", "logmel:n_mels=40")) == 1
    assert "no stored features" in capsys.readouterr().err


def test_recommended_is_the_default_method(experiment, capsys):
    root, src, tgt = experiment
    out = root / "recommended"
    spec = "opensmile:feature_set=eGeMAPSv02,feature_level=functionals"  # 88 = 1 view
    args = ["train", "--source", str(src), "--target", str(tgt), "--store", str(root / "store"),
            "--extractor", spec, "--out", str(out), "--compute-missing", "-p", "views=1",
            "-p", "normalise=per_corpus"]
    assert main(args) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "recommended" and metrics["test"]["ua"] > 0.5
    # the data-driven choices of the fit are recorded in the results and on the card
    assert metrics["fit_report"] == {"normalisation": "per_corpus"}
    assert load_bundle(out / "model").card["fit_report"] == metrics["fit_report"]
    assert json.loads((out / "config.json").read_text())["params"]["rounds"] == \
        [0.2, 0.4, 0.6, 0.8]
    # the bundle keeps its source vectors, so it can adapt to a user's folder
    memory = load_bundle(out / "model").load_memory()
    assert memory.features.shape[1] == 88 and memory.speaker_embeddings is None
    config = json.loads((out / "config.json").read_text())
    assert len(memory) == config["data"]["source"]["utterances"]


def test_few_shot_in_seconds_and_bad_sizes(experiment, capsys):
    """--target-labelled-k takes seconds of speech ("1s") as the config's few_shot does;
    the labelled rows then hold at least that much speech, more than a 1-utterance draw."""
    root, src, tgt = experiment
    out = root / "secs"
    assert main(_args(root, src, tgt, out, "--target-labelled-k", "1s")) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["target_labelled_k"] == "1s"
    assert config["data"]["target_labelled"]["utterances"] >= 4  # fixture clips last 0.3 s
    for bad in ("abc", "-3", "3 s"):
        assert main(_args(root, src, tgt, root / f"bad{len(bad)}", "--target-labelled-k",
                          bad)) == 1
        err = capsys.readouterr().err
        assert f"--target-labelled-k {bad!r}" in err and len(err.strip().splitlines()) == 1


def test_resume_after_a_kill_inside_the_bundle_save_or_the_run_json_write(experiment):
    """A SIGKILL after the bundle's weights were written but before its bundle.json (the
    last file), or during the atomic write of run.json, leaves files that must not block the
    resumed command (benchmarks/bench_crash.py)."""
    root, src, tgt = experiment
    ref = root / "killed_ref"
    assert main(_args(root, src, tgt, ref, "--resume")) == 0
    out = root / "killed_in_bundle"
    shutil.copytree(ref, out)
    (out / "metrics.json").unlink()
    (out / "model" / "bundle.json").unlink()
    (out / "model" / ".model.safetensors.ab12cd34.tmp.safetensors").write_bytes(b"\0" * 8)
    assert main(_args(root, src, tgt, out, "--resume")) == 0
    done = json.loads((out / "metrics.json").read_text())
    assert done["test"] == json.loads((ref / "metrics.json").read_text())["test"]
    load_bundle(out / "model", device="cpu")
    early = root / "killed_in_run_json"
    early.mkdir()
    (early / ".run.json.x1y2z3w4.tmp.json").write_text('{"comm')
    assert main(_args(root, src, tgt, early, "--resume")) == 0
    assert (early / "metrics.json").exists()
