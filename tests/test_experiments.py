"""Experiment configs, the grid runner, resumption, results tables and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from emobridge.cli import main
from emobridge.errors import ConfigError
from emobridge.experiments import ExperimentError, load_config, run_experiment, validate_config
from emobridge.experiments.results import bootstrap_mean_ua

REPO = Path(__file__).resolve().parents[1]


def _config(shared: Path, **overrides) -> dict:
    """A tiny grid: synthetic aa -> bb, eGeMAPS, two methods, two seeds, few epochs."""
    cfg = {
        "name": "tiny",
        "corpora": [{"id": "synth", "reader": "synthetic", "path": str(shared / "corpus"),
                     "options": {"languages": ["aa", "bb"], "speakers_per_language": 4,
                                 "utterances_per_speaker_per_emotion": 2, "seed": 1}}],
        "taxonomy": {"label_set": "4class"},
        "protocol": {"domain": "language", "pairs": [{"source": "aa", "target": "bb"}],
                     "source_split": {"train": 2, "validation": 1, "test": 1},
                     "target_split": {"train": 2, "validation": 1, "test": 1},
                     "few_shot": [0]},
        "features": {"extractors": ["opensmile:feature_set=eGeMAPSv02"],
                     "store": str(shared / "store")},
        "methods": [
            {"name": "src", "method": "source_only", "target_labels": "none",
             "params": {"epochs": 3, "batch_size": 16, "backbone_params": {"hidden_dims": [16]}}},
            {"name": "upper", "method": "supervised", "target_labels": "all",
             "params": {"epochs": 3, "batch_size": 16, "backbone_params": {"hidden_dims": [16]}}},
        ],
        "seeds": [0, 1],
        "device": "cpu",
        "report": {"max_points": 40, "bootstrap": 50},
    }
    cfg.update(overrides)
    return cfg


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="module")
def first_run(shared: Path):
    config = _write(shared / "tiny.yaml", _config(shared, output_dir="run"))
    cfg = load_config(config)
    lines: list[str] = []
    summary = run_experiment(cfg, log=lines.append)
    return config, cfg, summary, lines


def test_results_table(first_run) -> None:
    _, cfg, summary, _ = first_run
    run_dir = summary.run_dir
    assert run_dir == (cfg.output_dir) and run_dir.name == "run"
    assert (summary.n_cells, summary.n_run, summary.n_failed, summary.n_skipped) == (4, 4, 0, 0)
    table = pd.read_csv(run_dir / "results.csv", dtype={"k": str})
    assert list(table["method"]) == ["src", "upper"]
    assert list(table["k"]) == ["0", "all"]
    assert (table["task"] == "aa-to-bb").all() and (table["n_seeds"] == 2).all()
    for col in ("ua_mean", "wa_mean", "macro_f1_mean", "ua_ci_low", "ua_ci_high",
                "source_ua_mean"):
        assert table[col].between(0.0, 1.0).all(), col
    assert (table["ua_ci_low"] <= table["ua_ci_high"]).all()
    assert (table["ua_std"] >= 0).all()
    cells = pd.read_csv(run_dir / "cells.csv")
    assert len(cells) == 4 and (cells["status"] == "ok").all()
    # The aggregate is the mean of the cells' UAs.
    for _, row in table.iterrows():
        mine = cells[cells["method"] == row["method"]]["ua"]
        assert row["ua_mean"] == pytest.approx(mine.mean())
    md = (run_dir / "results.md").read_text()
    assert "| task |" in md and "aa-to-bb" in md and "±" in md


def test_cell_files_and_report(first_run) -> None:
    _, cfg, summary, _ = first_run
    run_dir = summary.run_dir
    cell = run_dir / "cells" / "aa-to-bb__opensmile__upper__kall__seed1"
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["cell"]["seed"] == 1
    target = metrics["target"]
    assert 0 <= target["ua"] <= 1 and target["ua_ci_low"] <= target["ua_ci_high"]
    assert np.asarray(target["confusion"]).sum() == target["n"]
    assert set(target["per_class"]) == {"anger", "happiness", "neutral", "sadness"}
    assert metrics["source"]["n"] > 0  # a source test speaker gives the source-language UA
    assert len(metrics["history"]) >= 1 and "loss" in metrics["history"][0]
    assert metrics["fit_report"] == {}  # a neural method makes no data-driven choice
    assert metrics["sizes"]["target_labelled"] == metrics["sizes"]["target_train"]["utterances"]
    assert -1 <= metrics["silhouette"]["emotion"] <= 1
    # Speaker independence: no test speaker was seen in training.
    assert metrics["sizes"]["target_test"]["speakers"] == 1
    emb = np.load(cell / "embedding.npz")
    assert emb["x"].shape[0] == len(emb["emotion"]) == len(emb["language"])
    assert set(emb["language"]) == {"aa", "bb"}
    info = json.loads((run_dir / "run.json").read_text())
    assert info["emobridge_version"] and "git_commit" in info
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["output_dir"] == str(run_dir) and resolved["seeds"] == [0, 1]
    figures = {p.name for p in (run_dir / "figures").glob("*.png")}
    assert "summary_ua.png" in figures
    for kind in ("confusion", "curves", "embedding"):
        assert f"{kind}__aa-to-bb__opensmile__src__k0.png" in figures
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 7
    assert "aa-to-bb" in html and "upper" in html and "Per class" in html


def test_resume_skips_finished_cells(first_run) -> None:
    config, cfg, summary, _ = first_run
    run_dir = summary.run_dir
    metrics = run_dir / "cells" / "aa-to-bb__opensmile__src__k0__seed0" / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    lines: list[str] = []
    reloaded = load_config(config)
    reloaded.report.tsne = False  # the report is redrawn; t-SNE was covered by the first run
    again = run_experiment(reloaded, log=lines.append)
    assert (again.n_skipped, again.n_run, again.n_failed) == (4, 0, 0)
    assert any("4 already finished (skipped), 0 to run" in line for line in lines)
    assert metrics.stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again.table, summary.table)

    # A broken metrics file and a changed method parameter re-run exactly those cells,
    # here in two worker processes.
    metrics.write_text("{not json")
    changed = _config(run_dir.parent, output_dir="run")
    changed["methods"][1]["params"]["epochs"] = 2
    changed["report"]["tsne"] = False
    lines = []
    third = run_experiment(validate_config(changed, "changed.yaml", run_dir.parent),
                           jobs=2, log=lines.append)
    assert (third.n_skipped, third.n_run, third.n_failed) == (1, 3, 0)
    doc = json.loads(metrics.read_text())
    assert doc["status"] == "ok"
    upper = json.loads((run_dir / "cells" / "aa-to-bb__opensmile__upper__kall__seed0"
                        / "metrics.json").read_text())
    assert upper["method_params"]["epochs"] == 2


def test_failed_cell_recorded_and_fail_fast(shared: Path) -> None:
    cfg = _config(shared, output_dir="failing", seeds=[0])
    # `supervised` without target labels raises inside fit: that cell fails, the other runs.
    cfg["methods"][1]["target_labels"] = "none"
    loaded = validate_config(cfg, "failing.yaml", shared)
    summary = run_experiment(loaded, log=None)
    assert (summary.n_run, summary.n_failed) == (1, 1)
    cell = summary.run_dir / "cells" / "aa-to-bb__opensmile__upper__k0__seed0"
    error = json.loads((cell / "error.json").read_text())
    assert "target_labelled" in error["error"]
    assert "Traceback" in (cell / "traceback.txt").read_text()
    assert not (cell / "metrics.json").exists()
    assert "Failed cells" in (summary.run_dir / "report.html").read_text()
    table = pd.read_csv(summary.run_dir / "results.csv")
    assert list(table["n_failed"]) == [0, 1]
    with pytest.raises(ExperimentError, match="upper__k0__seed0 failed"):
        run_experiment(loaded, fail_fast=True, log=None)


def test_bootstrap_mean_ua() -> None:
    perfect = [(np.array([0, 1, 2, 0]), np.array([0, 1, 2, 0]))] * 2
    assert bootstrap_mean_ua(perfect, 3, 200) == (1.0, 1.0)
    rng = np.random.default_rng(0)
    noisy = [(rng.integers(0, 4, 60), rng.integers(0, 4, 60)) for _ in range(3)]
    low, high = bootstrap_mean_ua(noisy, 4, 300)
    assert 0.0 <= low < 0.25 < high <= 1.0  # chance-level predictions: the CI holds 0.25
    assert np.isnan(bootstrap_mean_ua([], 4)[0])


# ---------------------------------------------------------------------- config errors


def _error(tmp_path: Path, cfg: dict | str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_config_errors_name_file_and_key(tmp_path: Path) -> None:
    base = _config(tmp_path)
    bad = json.loads(json.dumps(base))
    bad["methods"][0]["params"]["lr"] = "fast"
    msg = _error(tmp_path, bad)
    assert "config.yaml: methods.0.params.lr: Input should be a valid number" in msg

    bad = json.loads(json.dumps(base))
    bad["methods"][1]["params"]["epochz"] = 3
    assert "config.yaml: methods.1.params.epochz: unknown key" in _error(tmp_path, bad)

    bad = {**base, "seedz": [1]}
    assert "config.yaml: seedz: unknown key" in _error(tmp_path, bad)

    bad = json.loads(json.dumps(base))
    bad["protocol"]["target_split"]["test"] = -1
    assert "config.yaml: protocol.target_split.test: Input should be greater than or equal " \
        "to 0" in _error(tmp_path, bad)

    bad = json.loads(json.dumps(base))
    bad["methods"][0]["method"] = "magic"
    msg = _error(tmp_path, bad)
    assert "config.yaml: methods.0.method: unknown method 'magic'" in msg and "dann" in msg

    bad = json.loads(json.dumps(base))
    bad["features"]["extractors"] = ["mfccz"]
    assert "features.extractors.0: unknown extractor 'mfccz'" in _error(tmp_path, bad)

    bad = json.loads(json.dumps(base))
    bad["protocol"]["domain"] = "corpus"
    assert "protocol.pairs.0.source: unknown corpus 'aa'" in _error(tmp_path, bad)

    bad = json.loads(json.dumps(base))
    bad["corpora"][0]["options"]["speakers_per_language"] = 0
    assert "corpora.0" in _error(tmp_path, bad)

    bad = json.loads(json.dumps(base))
    bad["methods"][0]["params"]["seed"] = 3
    assert "methods.0: params ['seed'] are set by the runner" in _error(tmp_path, bad)

    assert "config.yaml: invalid YAML (line 2" in _error(tmp_path, "seeds: [1\nname: x: y\n")
    assert "key 'seeds' is given twice" in _error(tmp_path, "seeds: [1]\nseeds: [2]\n")
    assert "config.yaml: the config file is empty" in _error(tmp_path, "")


def test_config_paths_and_defaults(tmp_path: Path) -> None:
    cfg = validate_config(
        {"corpora": [{"synthetic": {"speakers_per_language": 3}}],
         "protocol": {"pairs": "leave_one_language_out"},
         "features": {"extractors": ["opensmile", {"name": "logmel", "params": {"n_mels": 40}}]},
         "methods": [{"method": "source_only"}]},
        "exp.yaml", tmp_path)
    assert cfg.name == "exp" and cfg.output_dir == tmp_path / "runs" / "exp"
    assert cfg.protocol.domain == "language" and cfg.protocol.pairs == "leave_one_out"
    corpus = cfg.corpora[0]
    assert corpus.reader == "synthetic" and corpus.synthetic_options.speakers_per_language == 3
    assert corpus.path == cfg.output_dir / "synthetic" / "synthetic"
    assert cfg.features.store == cfg.output_dir / "features"
    assert [f.label for f in cfg.feature_specs] == ["opensmile", "logmel"]
    assert cfg.methods[0].label == "source_only"
    with pytest.raises(ConfigError, match="target 'e' is also a source"):
        validate_config(
            {"corpora": [{"id": "e", "reader": "emodb", "path": "emodb"}],
             "features": {"extractors": ["opensmile"]}, "methods": [{"method": "dann"}],
             "protocol": {"pairs": [{"source": "e", "target": "e"}]}},
            "x.yaml", tmp_path)
    two = validate_config(
        {"corpora_root": "data",
         "corpora": [{"id": "e", "reader": "emodb", "path": "emodb"},
                     {"id": "i", "reader": "emovo", "path": "/abs/emovo", "language": "it"}],
         "features": {"extractors": ["opensmile"]}, "methods": [{"method": "dann"}]},
        "x.yaml", tmp_path, output_dir=tmp_path / "out", device="cuda:1")
    assert two.corpora[0].path == tmp_path / "data" / "emodb"
    assert two.corpora[1].path == Path("/abs/emovo")
    assert two.output_dir == tmp_path / "out" and two.device == "cuda:1"
    assert two.protocol.pairs == "all_pairs"


def test_cli_reports_bad_config(tmp_path: Path, capsys) -> None:
    cfg = _config(tmp_path)
    cfg["methods"][0]["params"]["lr"] = "fast"
    path = _write(tmp_path / "broken.yaml", cfg)
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "broken.yaml: methods.0.params.lr: Input should be a valid number" in err


def test_cli_synth_and_quickstart_config(tmp_path: Path, capsys) -> None:
    assert main(["synth", str(tmp_path / "c"), "--languages", "aa", "--speakers", "1",
                 "--utterances", "1"]) == 0
    assert "wrote 4 utterances" in capsys.readouterr().out
    assert len(list((tmp_path / "c").glob("aa/*/*.wav"))) == 4
    quick = load_config(REPO / "configs" / "quickstart.yaml")
    assert quick.corpora[0].reader == "synthetic" and len(quick.methods) >= 2
    assert len(quick.seeds) >= 2
    assert quick.output_dir == REPO / "runs" / "quickstart"
