"""pyarrow is an extra (``emobridge[parquet]``): without it the CLI imports, features are
extracted into a store from a CSV manifest (the hash cache is JSON), and every Parquet read or
write says in one line what to install, naming the file, with no traceback.

Each check runs in a subprocess where ``pyarrow`` (and pandas' other Parquet engine,
``fastparquet``) cannot be imported: ``sys.modules[name] = None`` makes ``import name`` raise
ImportError, which pandas' own optional import of pyarrow takes as "not installed".
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from emobridge.corpora import make_manifest, write_manifest
from tests.conftest import write_tone

SPEC = "logmel:n_mels=16"
HINT = "pip install 'emobridge[parquet]'"
BLOCK = ("import sys\n"
         "sys.modules['pyarrow'] = None; sys.modules['fastparquet'] = None\n")


def _without_pyarrow(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def _csv_manifest(tmp_path: Path, n: int = 3) -> Path:
    paths = [write_tone(tmp_path / "audio" / f"u{i}.wav", duration_s=0.3, f0_hz=120 + 40 * i,
                        seed=i) for i in range(n)]
    df = make_manifest(
        {"path": str(p), "corpus": "toy", "language": "it", "speaker": "toy:1", "gender": "f",
         "label": "neu", "emotion": "neutral", "duration_s": 0.3, "sample_rate": 16_000}
        for p in paths)
    return write_manifest(df, tmp_path / "manifest.csv")[0]


def test_store_and_csv_manifests_need_no_pyarrow(tmp_path: Path) -> None:
    manifest = _csv_manifest(tmp_path)
    store = tmp_path / "store"
    args = ["features", "extract", str(manifest), "-e", SPEC, "-o", str(store),
            "--device", "cpu", "--no-progress"]
    code = (
        "import json\n"
        "import emobridge.cli\n"
        f"args = {args!r}\n"
        "print('exit', emobridge.cli.main(args))\n"
        "print('exit', emobridge.cli.main(args))  # reads the hash cache back\n"
        "from emobridge.corpora import read_manifest, write_manifest\n"
        f"written = write_manifest(read_manifest({str(manifest)!r}), 'both')\n"
        "print('written', [p.name for p in written])\n"
        "print('loaded', sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pyarrow', 'fastparquet') and sys.modules[m] is not None))\n"
    )
    run = _without_pyarrow(code, tmp_path)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert out.count("exit 0") == 2, out
    assert "3 computed" in out and "3 reused" in out, out
    assert "written ['both.csv']" in out  # a stem writes CSV only, not a failing Parquet
    assert "loaded []" in out
    assert "warning" not in run.stderr and "Traceback" not in run.stderr, run.stderr
    cache = json.loads((store / "hashes.json").read_text())
    assert sorted(row[0] for row in cache["rows"]) == sorted(
        str(p) for p in (tmp_path / "audio").glob("*.wav"))
    assert not (store / "hashes.parquet").exists()


def test_parquet_without_pyarrow_is_one_line_naming_the_file(tmp_path: Path) -> None:
    manifest = tmp_path / "list.parquet"
    manifest.write_bytes(b"PAR1 no engine gets this far PAR1")
    wave = write_tone(tmp_path / "a.wav", duration_s=0.3)
    commands = [
        ["corpora", "stats", str(manifest)],
        ["features", "extract", str(manifest), "-e", SPEC, "-o", str(tmp_path / "store"),
         "--no-progress"],
        ["predict", str(manifest)],
        ["predict", str(wave), "-o", str(tmp_path / "out.parquet")],
    ]
    code = (
        "from emobridge.cli import main\n"
        f"for argv in {commands!r}:\n"
        "    print('exit', main(argv), flush=True)\n"
        "    print('--', file=sys.stderr, flush=True)\n"
        "import pandas as pd\n"
        "from emobridge.corpora import read_manifest, write_manifest\n"
        "from emobridge.errors import CorpusError\n"
        f"df = read_manifest({str(tmp_path / 'm.csv')!r})\n"
        "try:\n"
        "    write_manifest(df, 'm.parquet')\n"
        "except CorpusError as exc:\n"
        "    print(exc, file=sys.stderr)\n"
    )
    _csv_manifest(tmp_path).rename(tmp_path / "m.csv")
    run = _without_pyarrow(code, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["exit", "1"] * len(commands), run.stdout
    assert "Traceback" not in run.stderr
    *outputs, library = run.stderr.split("--\n")
    named = [str(manifest)] * 3 + [f"--out {tmp_path / 'out.parquet'}"]
    for text, name in zip(outputs, named, strict=True):
        lines = text.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), text
        assert name in lines[0] and HINT in lines[0], lines[0]
    assert library.strip().startswith("manifest m.parquet: Parquet needs pyarrow")
    assert HINT in library
    assert not (tmp_path / "m.parquet").exists() and not (tmp_path / "out.parquet").exists()
    # no half-written temporary file is left beside the target either
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.parquet")]
