"""``emobridge model export --format onnx`` and its torch-free runner, on a tiny random
Whisper encoder and a recipe bundle over generated tones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emobridge.cli import main
from tests.conftest import save_tiny_whisper, write_tone
from tests.inference_fixtures import CLASSES, F0

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

#: Imports the runner must not need: a subprocess runs it with these made unimportable.
BLOCKED = ("torch", "emobridge", "sklearn", "pandas", "librosa", "scipy")


@pytest.fixture(scope="module")
def recipe_bundle(tmp_path_factory):
    """A recipe bundle over a 3-layer random Whisper (d = 16), and 2-s tones to label."""
    from emobridge.features.registry import build_extractor
    from emobridge.inference.bundle import save_bundle
    from emobridge.methods import EmotionData, build_method

    root = tmp_path_factory.mktemp("onnx")
    save_tiny_whisper(root / "whisper")
    spec = f"whisper:backend=torch,model={root / 'whisper'},layer=[1,2],pooling=mean,level=rms"
    ext = build_extractor(spec)
    paths, labels = [], []
    for i in range(32):
        label = i % 4
        paths.append(write_tone(root / f"s{i % 2}_{i}.wav", duration_s=1.0 + 0.05 * i,
                                f0_hz=F0[CLASSES[label]] * (1 + 0.01 * i), seed=i))
        labels.append(label)
    feats = ext.extract_batch([ext_read(p) for p in paths], 16_000)
    data = EmotionData(feats, np.array(labels), [f"s{i % 2}" for i in range(32)],
                       ["xx"] * 32, [str(i) for i in range(32)], CLASSES)
    method = build_method("recommended", views=2, rounds=[0.5], normalise="per_corpus")
    method.fit(data)
    folder = save_bundle(method, root / "bundle", extractor=spec, label_set="4class")
    long_tone = write_tone(root / "long.wav", duration_s=31.0, f0_hz=200.0, seed=99)
    return folder, [*paths[:4], long_tone]


def ext_read(path: Path) -> np.ndarray:
    from emobridge.audio import load_audio

    return load_audio(path, 16_000)


def test_export_matches_the_torch_path_without_torch(recipe_bundle, tmp_path, capsys):
    from emobridge.inference.recognizer import Recognizer

    bundle, files = recipe_bundle
    out = tmp_path / "export"
    assert main(["model", "export", str(bundle), "-o", str(out)]) == 0, capsys.readouterr()
    assert "largest difference to the torch path" in capsys.readouterr().out
    manifest = json.loads((out / "onnx.json").read_text())
    assert manifest["layers"] == [1, 2] and manifest["max_difference"] < 1e-4
    rec = Recognizer.load(bundle)
    rec.extractor.cpu_bf16 = "off"  # the export is float32
    expected = rec.predict_many([str(f) for f in files], stats="bundle")
    block = "; ".join(f"sys.modules[{name!r}] = None" for name in BLOCKED)
    code = (f"import sys, runpy; {block}; sys.argv = ['emobridge_onnx.py'] + sys.argv[1:]; "
            f"runpy.run_path({str(out / 'emobridge_onnx.py')!r}, run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", code, str(out), *map(str, files)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    rows = [line.split("\t") for line in run.stdout.splitlines()]
    assert len(rows) == len(files)  # the 31-s file is two encoder windows, combined
    for row, (_, want) in zip(rows, expected.iterrows(), strict=True):
        got = {kv.split("=")[0]: float(kv.split("=")[1]) for kv in row[2:]}
        assert row[1] == want["emotion"]
        np.testing.assert_allclose([got[c] for c in CLASSES],
                                   [want[f"p_{c}"] for c in CLASSES], atol=2e-4)


def test_export_refusals_are_one_line(recipe_bundle, tmp_path, capsys):
    from tests.inference_fixtures import build_tiny_bundle

    bundle, files = recipe_bundle
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own file")
    assert main(["model", "export", str(bundle), "-o", str(mine)]) == 1
    err = capsys.readouterr().err
    assert "not empty and not made by emobridge" in err and "Traceback" not in err
    assert (mine / "notes.txt").read_text() == "my own file"
    assert main(["model", "export", str(bundle), "-o", str(tmp_path / "x"),
                 "--format", "tflite"]) == 2
    assert "tflite" in capsys.readouterr().err
    other = build_tiny_bundle(tmp_path / "neural")
    assert main(["model", "export", str(other), "-o", str(tmp_path / "y")]) == 1
    err = capsys.readouterr().err
    assert "supports bundles of method 'recommended'" in err and err.count("\n") == 1
    # the runner: a folder that is not an export, then a missing file among good ones
    runner = Path(__file__).parents[1] / "src" / "emobridge" / "inference" / "onnx.py"
    bad = subprocess.run([sys.executable, str(runner), str(mine), str(files[0])],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and "onnx.json" in bad.stderr
    out = tmp_path / "export"
    assert main(["model", "export", str(bundle), "-o", str(out)]) == 0
    run = subprocess.run([sys.executable, str(out / "emobridge_onnx.py"), str(out),
                          str(files[0]), str(tmp_path / "missing.wav")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and len(run.stdout.splitlines()) == 1
    assert "missing.wav" in run.stderr and "Traceback" not in run.stderr
