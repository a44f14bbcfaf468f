"""Few-shot sizes in seconds, rotated target folds, and both through ``emobridge run`` with
the deep_wccn and random_forest methods."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from emobridge.errors import ConfigError
from emobridge.experiments import load_config, run_experiment
from emobridge.protocols import (
    ProtocolError,
    assemble_cell,
    cross_corpus_split,
    few_shot_seconds,
    few_shot_subset,
    parse_few_shot,
)


def _manifest(language: str, speakers: int, per_speaker: int = 8) -> pd.DataFrame:
    rows = []
    for s in range(speakers):
        for i in range(per_speaker):
            rows.append({"path": f"/{language}/{s}/{i}.wav", "speaker": f"{language}{s}",
                         "emotion": ["anger", "happiness", "neutral", "sadness"][i % 4],
                         "duration_s": 1.0 + 0.25 * (i % 3), "language": language,
                         "gender": "f" if s % 2 else "m"})
    return pd.DataFrame(rows)


def test_few_shot_seconds_reaches_the_amount_and_nests():
    pool = _manifest("it", 3)
    ten = few_shot_seconds(pool, 10.0, seed=4)
    twenty = few_shot_seconds(pool, 20.0, seed=4)
    assert ten["duration_s"].sum() >= 10.0
    assert ten["duration_s"].sum() - ten["duration_s"].iloc[-1] < 10.0 or len(ten) == 1
    assert set(ten["path"]) <= set(twenty["path"])
    # the same draw order as the utterance-count draw
    assert set(few_shot_subset(pool, len(ten), seed=4)["path"]) == set(ten["path"])
    assert few_shot_seconds(pool, 0, seed=4).empty
    with pytest.raises(ProtocolError, match="holds only"):
        few_shot_seconds(pool, 1e6)


@pytest.mark.parametrize("k, parsed", [(5, ("utterances", 5.0)), ("150s", ("seconds", 150.0)),
                                       ("2.5s", ("seconds", 2.5)), ("all", ("all", 0.0))])
def test_parse_few_shot(k, parsed):
    assert parse_few_shot(k) == parsed


@pytest.mark.parametrize("bad", [-1, "150", "s", "1.5 s", True, 2.5])
def test_parse_few_shot_refuses(bad):
    with pytest.raises(ProtocolError, match="few-shot size"):
        parse_few_shot(bad)


def test_target_folds_test_every_target_utterance_once():
    source, target = _manifest("de", 5), _manifest("it", 5)
    tested = []
    for i in range(5):
        split = cross_corpus_split(source, target, (3, 1, 1), seed=2, target_fold=(i, 5),
                                   source_ratios=(3, 1, 1))
        assert split.target_validation["speaker"].nunique() == 1
        assert split.target_train["speaker"].nunique() == 3
        tested += list(split.target_test["path"])
    assert sorted(tested) == sorted(target["path"])
    no_val = cross_corpus_split(source, target, (3, 0, 1), target_fold=(0, 2))
    assert no_val.target_validation.empty
    assert len(no_val.target_train) + len(no_val.target_test) == 40
    cell = assemble_cell(source, target, k="6s", target_fold=(1, 5), target_ratios=(3, 1, 1))
    assert cell.labelled["duration_s"].sum() >= 6.0
    assert set(cell.labelled["path"]) <= set(cell.unlabelled["path"])
    with pytest.raises(ProtocolError, match="outside"):
        cross_corpus_split(source, target, target_fold=(5, 5))
    with pytest.raises(ProtocolError, match="target folds: .*at least 6 speakers"):
        cross_corpus_split(source, target, target_fold=(0, 6))


def _config(root: Path, **protocol) -> dict:
    return {
        "name": "wccn-tiny",
        "corpora": [{"id": "synth", "reader": "synthetic", "path": str(root / "corpus"),
                     "options": {"languages": ["aa", "bb"], "speakers_per_language": 3,
                                 "utterances_per_speaker_per_emotion": 1, "seed": 1}}],
        "taxonomy": {"label_set": "4class"},
        "protocol": {"domain": "language", "pairs": [{"source": "aa", "target": "bb"}],
                     "source_split": {"train": 2, "validation": 1},
                     "target_split": {"train": 1, "validation": 1, "test": 1},
                     "target_folds": 3, "few_shot": [0, "3s"], **protocol},
        "features": {"extractors": ["opensmile:feature_set=eGeMAPSv02"],
                     "store": str(root / "store")},
        "methods": [
            {"name": "rf", "method": "random_forest", "params": {"n_estimators": 5,
                                                                  "wccn": True}},
            {"name": "dw", "method": "deep_wccn", "target_labels": "none",
             "params": {"epochs": 1, "hidden_dim": 8, "lr": 0.01}},
        ],
        "seeds": [0], "device": "cpu", "output_dir": str(root / "run"),
        "report": {"max_points": 20, "bootstrap": 0, "embeddings": False},
    }


def test_run_with_target_folds_and_seconds(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path)), encoding="utf-8")
    summary = run_experiment(load_config(path), log=lambda _m: None)
    cells = sorted((tmp_path / "run" / "cells").iterdir())
    names = [c.name for c in cells]
    assert any("__rf__k3s__" in n for n in names), names
    assert len(cells) == 3  # rf at k 0 and 3s, dw at k 0
    manifest = pd.read_csv(tmp_path / "corpus" / "manifest.csv") \
        if (tmp_path / "corpus" / "manifest.csv").exists() else None
    for cell in cells:
        metrics = json.loads((cell / "metrics.json").read_text())
        assert metrics["status"] == "ok", cell
        assert [f["fold"] for f in metrics["folds"]] == [0, 1, 2]
        ids = metrics["predictions"]["target"]["ids"]
        assert len(ids) == len(set(ids)) == metrics["target"]["n"]
        assert sum(f["n"] for f in metrics["folds"]) == len(ids)
        if manifest is not None:
            target = metrics["cell"]["target_domain"]
            assert len(ids) == int((manifest["language"] == target).sum())
    assert summary is not None


def test_config_refuses_bad_few_shot_and_folds(tmp_path):
    for protocol, match in (({"few_shot": ["3 seconds"]}, "few-shot size"),
                            ({"few_shot": [3, "3"]}, "twice"),
                            ({"target_folds": 1}, "target_folds")):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(_config(tmp_path, **protocol)), encoding="utf-8")
        with pytest.raises(ConfigError, match=match):
            load_config(path)
    assert np.isfinite(parse_few_shot("0.5s")[1])


def test_methods_run_only_on_their_features(tmp_path):
    from emobridge.experiments.results import Task
    from emobridge.experiments.runner import expand_cells

    cfg = _config(tmp_path)
    cfg["features"]["extractors"] = [
        {"name": "opensmile", "params": {"feature_set": "eGeMAPSv02"}, "label": "egemaps"},
        {"name": "logmel", "label": "mel"}]
    cfg["methods"][0]["features"] = ["egemaps"]
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    keys = expand_cells(load_config(path), [Task("aa_to_bb", ("aa",), "bb")])
    pairs = sorted({(k.method, k.feature) for k in keys})
    assert pairs == [("dw", "egemaps"), ("dw", "mel"), ("rf", "egemaps")]
    cfg["methods"][0]["features"] = ["nope"]
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    with pytest.raises(ConfigError, match="not extractor labels"):
        load_config(path)
