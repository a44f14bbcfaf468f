"""``emobridge predict`` and ``emobridge model info`` end to end through cli.main."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from emobridge.cli import main
from emobridge.inference.recognizer import DEFAULT_MODEL_ENV
from tests.inference_fixtures import CLASSES, shared_tiny_bundle, tone


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    return shared_tiny_bundle(tmp_path_factory)


@pytest.fixture
def folder(tmp_path):
    for i, e in enumerate(CLASSES):
        tone(tmp_path / "in" / ("sub" if i % 2 else "") / f"{e}.wav", e)
    (tmp_path / "in" / "notes.txt").write_text("not audio, not picked from a folder")
    return tmp_path / "in"


@pytest.mark.parametrize("suffix", [".csv", ".json", ".parquet"])
def test_folder_to_each_format(tiny_bundle, folder, tmp_path, suffix):
    out = tmp_path / f"pred{suffix}"
    assert main(["predict", "--model", str(tiny_bundle), str(folder), "-o", str(out)]) == 0
    if suffix == ".json":
        doc = json.loads(out.read_text())
        table = pd.DataFrame(doc["rows"])
        assert doc["classes"] == list(CLASSES) and doc["errors"] == {}
    else:
        table = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    assert len(table) == 4 and set(table["emotion"]) <= set(CLASSES)
    assert {"path", "duration_s", "stats", *[f"p_{c}" for c in CLASSES]} <= set(table.columns)
    assert table["path"].str.endswith(".wav").all()


def test_unreadable_files_exit_nonzero_unless_skipped(tiny_bundle, folder, tmp_path, capsys):
    (folder / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    missing = tmp_path / "missing.wav"
    out = tmp_path / "p.csv"
    assert main(["predict", "-m", str(tiny_bundle), str(folder), str(missing),
                 "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "broken.wav" in err and "missing.wav" in err and "2 of 6 files" in err
    assert len(pd.read_csv(out)) == 4  # the readable ones are still written
    assert main(["predict", "-m", str(tiny_bundle), str(folder), str(missing),
                 "--skip-errors", "-o", str(out)]) == 0
    assert "skipped 2 of 6 files" in capsys.readouterr().err


def test_manifest_terminal_table_and_bad_options(tiny_bundle, folder, tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": ["in/anger.wav", str(folder / "sub" / "happiness.wav")]}).to_csv(
        manifest, index=False)
    assert main(["predict", "-m", str(tiny_bundle), str(manifest)]) == 0
    shown = capsys.readouterr().out
    assert "emotion" in shown and "statistics: bundle" in shown
    assert main(["predict", "-m", str(tiny_bundle), str(folder), "-o", "x.xlsx"]) == 1
    assert ".csv, .json or .parquet" in capsys.readouterr().err
    assert main(["predict", "-m", str(tiny_bundle), str(folder), "--plot", "t.png"]) == 1
    assert "--segment" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", "-m", str(tiny_bundle), str(tmp_path / "empty")]) == 1
    assert "no audio files" in capsys.readouterr().err
    assert main(["predict", "-m", str(tmp_path), str(folder)]) == 1
    assert "not a model bundle" in capsys.readouterr().err


def test_segments_and_plot(tiny_bundle, tmp_path):
    path = tone(tmp_path / "long.wav", "sadness", duration_s=5.0)
    out, plot = tmp_path / "t.csv", tmp_path / "t.png"
    assert main(["predict", "-m", str(tiny_bundle), str(path), "--segment", "fixed",
                 "--window", "2", "--hop", "1", "-o", str(out), "--plot", str(plot)]) == 0
    table = pd.read_csv(out)
    assert table[["start_s", "end_s"]].values.tolist() == [[0, 2], [1, 3], [2, 4], [3, 5]]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_model_without_model_option(tiny_bundle, folder, tmp_path, monkeypatch,
                                            capsys):
    monkeypatch.setenv(DEFAULT_MODEL_ENV, str(tmp_path / "absent"))
    assert main(["predict", str(folder)]) == 1
    assert "build_default_model.py" in capsys.readouterr().err
    assert main(["model", "info"]) == 1
    monkeypatch.setenv(DEFAULT_MODEL_ENV, str(tiny_bundle))
    out = tmp_path / "d.csv"
    assert main(["predict", str(folder), "-o", str(out)]) == 0
    assert len(pd.read_csv(out)) == 4
    capsys.readouterr()
    assert main(["model", "info", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["method"] == "source_only" and card["intended_use"] == "tests only"
