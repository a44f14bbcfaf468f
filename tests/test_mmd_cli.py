"""``emobridge train -m mmd`` and ``emobridge run`` with the mmd method, end to end."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch
import yaml

from emobridge.cli import main
from emobridge.features import FeatureStore
from emobridge.inference.bundle import load_bundle
from tests.test_cli_train import EXTRACTOR, _corpus

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::emobridge.errors.EmobridgeWarning")

TINY_VGG = {"depth": 11, "width": 0.125, "image_size": 32, "fc_dim": 16, "pool_size": 1,
            "dropout": 0.0}
PARAMS = {"source_epochs": 2, "epochs": 2, "lr": 0.003, "source_lr": 0.003, "batch_size": 8,
          "backbone_params": TINY_VGG}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmd_cli")
    src = _corpus(root, "srccorp", "de", n_speakers=4)
    tgt = _corpus(root, "tgtcorp", "it", n_speakers=4)
    store = FeatureStore(root / "store")
    for manifest in (src, tgt):
        store.extract(manifest, EXTRACTOR, progress=False)
    return root, src, tgt


def _train(root, src, tgt, out, *extra):
    args = ["train", "--source", str(src), "--target", str(tgt), "--store",
            str(root / "store"), "--extractor", EXTRACTOR, "--out", str(out), "--seed", "0",
            "--device", "cpu", "--method", "mmd"]
    for key, value in PARAMS.items():
        args += ["--param", f"{key}={json.dumps(value)}"]
    return main(args + list(extra))


def test_train_mmd_unsupervised_and_with_k_labelled(corpora, capsys):
    root, src, tgt = corpora
    out = root / "mmd"
    assert _train(root, src, tgt, out) == 0
    # said, not silent: the CLI prints the EmobridgeWarning as one line
    assert re.search(r"^warning: .*random weights", capsys.readouterr().err, re.MULTILINE)
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert metrics["method"] == "mmd" and 0.0 <= metrics["test"]["ua"] <= 1.0
    assert [r["phase"] for r in metrics["history"]][-2:] == ["adapt", "adapt"]
    assert all("mmd_loss" in r for r in metrics["history"] if r["phase"] == "adapt")
    assert config["params"]["domain_loss_layer"] == "first_fc"
    assert config["data"]["target_unlabelled"]["utterances"] > 0
    model = load_bundle(out / "model", device="cpu").method
    assert model.name == "mmd" and model.backbone_ == "vgg"

    few = root / "mmd_k4"
    assert _train(root, src, tgt, few, "--target-labelled-k", "4") == 0
    config = json.loads((few / "config.json").read_text())
    assert config["data"]["target_labelled"]["utterances"] == 4


def test_train_mmd_bad_parameter_is_one_line(corpora, capsys):
    root, src, tgt = corpora
    assert _train(root, src, tgt, root / "bad", "--param", "domain_loss=wasserstein") == 1
    err = capsys.readouterr().err
    assert "domain_loss" in err and "Traceback" not in err


def test_run_tl_beside_mmd_on_the_synthetic_corpus(tmp_path):
    cfg = {
        "name": "mmd-tiny",
        "corpora": [{"id": "synth", "reader": "synthetic", "path": str(tmp_path / "corpus"),
                     "options": {"languages": ["aa", "bb"], "speakers_per_language": 4,
                                 "utterances_per_speaker_per_emotion": 1, "seed": 1}}],
        "taxonomy": {"label_set": "4class"},
        "protocol": {"domain": "language", "pairs": [{"source": "aa", "target": "bb"}],
                     "source_split": {"train": 3, "validation": 1},
                     "target_split": {"train": 2, "test": 2}, "few_shot": [0]},
        "features": {"extractors": [EXTRACTOR], "store": str(tmp_path / "store")},
        "methods": [
            {"name": "tl", "method": "source_only", "target_labels": "none",
             "params": {"backbone": "vgg", "backbone_params": TINY_VGG, "normalise": "none",
                        "epochs": 2, "batch_size": 8}},
            {"name": "mmd", "method": "mmd", "target_labels": "none", "params": PARAMS},
        ],
        "seeds": [0],
        "device": "cpu",
        "output_dir": str(tmp_path / "run"),
        "report": {"embeddings": False, "tsne": False, "bootstrap": 20},
    }
    path = tmp_path / "mmd.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    assert main(["run", str(path)]) == 0
    results = list((tmp_path / "run").rglob("results*.csv"))
    assert results, sorted(p.name for p in (tmp_path / "run").iterdir())
    table = pd.read_csv(results[0])
    assert {"tl", "mmd"} <= set(table.astype(str).to_numpy().ravel())
