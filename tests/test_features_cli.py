"""``emobridge features ...`` through :func:`emobridge.cli.main`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emobridge.cli import main
from emobridge.corpora import make_manifest, write_manifest
from emobridge.features import FeatureStore, build_extractor
from tests.conftest import write_tone


def _write_manifest(tmp_path: Path, extra: list[Path] = ()) -> Path:
    paths = [write_tone(tmp_path / "audio" / f"u{i}.wav", duration_s=0.3, f0_hz=120 + 40 * i,
                        seed=i) for i in range(3)] + list(extra)
    df = make_manifest(
        {"path": str(p), "corpus": "toy", "language": "it", "speaker": "toy:1", "gender": "f",
         "label": "neu", "emotion": "neutral", "duration_s": 0.3, "sample_rate": 16_000}
        for p in paths)
    return write_manifest(df, tmp_path / "manifest.parquet")[0]


def test_extract_list_prune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _write_manifest(tmp_path)
    store = tmp_path / "store"
    spec = "logmel:preset=byols,n_mels=16"
    args = ["features", "extract", str(manifest), "--extractor", spec, "-o", str(store),
            "--workers", "2", "--batch-size", "2", "--device", "cpu"]
    assert main(args) == 0
    ext = build_extractor(spec)
    out = capsys.readouterr().out
    assert "3 computed" in out and ext.id in out
    assert main(args) == 0
    assert "3 reused" in capsys.readouterr().out
    feats = FeatureStore(store).load(manifest, ext)
    assert len(feats) == 3 and feats[0].shape[1] == 16 and np.isfinite(feats[0]).all()
    assert main(["features", "list", str(store)]) == 0
    assert ext.id in capsys.readouterr().out
    assert main(["features", "prune", str(store)]) == 0
    assert main(["features", "prune", str(store), "--extractor", ext.id]) == 0
    assert not (store / ext.id).exists()
    assert main(["features", "prune", str(store), "--extractor", ext.id]) == 1
    assert main(["features", "list", str(tmp_path / "nowhere")]) == 1


def test_extractors_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["features", "extractors"]) == 0
    out = capsys.readouterr().out
    for name in ("logmel", "opensmile", "hf"):
        assert name in out


def test_errors_and_skip_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "audio" / "broken.wav"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not audio")
    manifest = _write_manifest(tmp_path, [broken])
    base = ["features", "extract", str(manifest), "-o", str(tmp_path / "store")]
    assert main([*base, "--extractor", "logmel:preset=byols"]) == 1
    assert "broken.wav" in capsys.readouterr().err
    assert main([*base, "--extractor", "logmel:preset=byols", "--skip-errors"]) == 0
    out = capsys.readouterr().out
    assert "1 failed" in out and "broken.wav" in out
    assert main([*base, "--extractor", "nosuch"]) == 1
    assert "unknown extractor" in capsys.readouterr().err
    assert main([*base, "--extractor", "opensmile", "--device", "cuda"]) == 1
    assert main([*base, "--extractor", "logmel:n_mels=-3"]) == 1
