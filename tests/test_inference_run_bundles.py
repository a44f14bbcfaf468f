"""``save_models: true`` in an experiment config: one bundle per cell, usable by predict."""

from __future__ import annotations

import json

import pytest

from emobridge.cli import main
from emobridge.experiments import load_config, run_experiment
from tests.test_experiments import _config, _write


@pytest.mark.slow  # a whole (one-cell) experiment on a generated corpus
def test_run_writes_a_bundle_per_cell(tmp_path, capsys):
    cfg = _config(tmp_path, output_dir="run", save_models=True, seeds=[0])
    cfg["methods"] = cfg["methods"][:1]
    summary = run_experiment(load_config(_write(tmp_path / "c.yaml", cfg)))
    bundles = sorted(summary.run_dir.glob("cells/*/model/bundle.json"))
    assert len(bundles) == 1
    meta = json.loads(bundles[0].read_text())
    metrics = json.loads((bundles[0].parent.parent / "metrics.json").read_text())
    assert meta["method"]["name"] == "source_only" and meta["feature_id"] == \
        metrics["feature_id"]
    assert meta["training"]["metrics"]["target_test"]["ua"] == metrics["target"]["ua"]
    assert meta["training"]["languages"] == ["aa"]
    wav = next((tmp_path / "corpus").rglob("*.wav"))
    out = tmp_path / "p.json"
    assert main(["predict", "-m", str(bundles[0].parent), str(wav), "-o", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["emotion"] in meta["classes"]
