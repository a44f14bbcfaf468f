"""Ordinary faults around the feature store: a read-only medium, a full disk, damaged files.

Read-only and full media are real: the store folder is bind-mounted read-only, or replaced by
a tiny tmpfs, inside a private mount namespace (``unshare``), which works as root too (where
``chmod`` stops nothing).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from emobridge.cli import main
from emobridge.corpora import make_manifest, write_manifest
from emobridge.errors import EmobridgeWarning, FeatureError
from emobridge.features import FeatureStore, build_extractor
from tests.conftest import write_tone

SRC = str(Path(__file__).resolve().parents[1] / "src")
SPEC = "logmel:n_mels=16"


def _manifest(folder: Path, n: int, name: str = "manifest.csv", first: int = 0) -> Path:
    paths = [write_tone(folder / "audio" / f"u{i:03d}.wav", duration_s=0.5, f0_hz=100 + 7 * i,
                        seed=i) for i in range(first, first + n)]
    df = make_manifest(
        {"path": str(p), "corpus": "toy", "language": "it", "speaker": "toy:1", "gender": "f",
         "label": "neu", "emotion": "neutral", "duration_s": 0.5, "sample_rate": 16_000}
        for p in paths)
    return write_manifest(df, folder / name)[0]


def _namespace_works(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && ! touch "$1/x"'
    try:
        ok = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(probe)],
                            capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    probe.rmdir()
    return ok


@pytest.fixture
def namespace(tmp_path: Path):
    """``run(setup, *cli_args)``: the CLI in a private mount namespace after ``setup``
    (a shell snippet using $D, the store folder)."""
    if shutil.which("unshare") is None or not _namespace_works(tmp_path):
        pytest.skip("no private mount namespaces here (unshare -rm refused)")

    def run(store: Path, setup: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": SRC, "D": str(store)}
        cmd = f'{setup} && exec "$@"'
        return subprocess.run(
            ["unshare", "-rm", "sh", "-c", cmd, "sh", sys.executable, "-m", "emobridge.cli",
             *args], capture_output=True, text=True, env=env, timeout=120)

    return run


READ_ONLY = 'mount --bind "$D" "$D" && mount -o remount,ro,bind "$D" "$D"'


def test_read_only_store_serves_reads_and_refuses_writes(tmp_path: Path, namespace) -> None:
    manifest = _manifest(tmp_path, 3)
    store = tmp_path / "store"
    assert FeatureStore(store).extract(manifest, SPEC, progress=False).computed == 3
    args = ["features", "extract", str(manifest), "-e", SPEC, "-o", str(store)]
    os.utime(tmp_path / "audio" / "u000.wav")  # hashed again: a cache it cannot save
    proc = namespace(store, READ_ONLY, *args)
    assert proc.returncode == 0, proc.stderr
    assert "0 computed, 3 reused" in proc.stdout
    proc = namespace(store, READ_ONLY, "features", "list", str(store))
    assert proc.returncode == 0 and build_extractor(SPEC).id in proc.stdout

    more = _manifest(tmp_path, 1, "more.csv", first=3)  # a file not stored yet
    proc = namespace(store, READ_ONLY, "features", "extract", str(more), "-e", SPEC,
                     "-o", str(store))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("error: ") and str(store) in lines[0]
    assert "Read-only file system" in lines[0]


def test_full_disk_is_one_line_and_keeps_the_store_consistent(tmp_path: Path,
                                                              namespace) -> None:
    small = _manifest(tmp_path, 2, "small.csv")
    big = _manifest(tmp_path, 40, "big.csv", first=2)
    store = tmp_path / "store"
    store.mkdir()
    check = (f'{sys.executable} -c "import sys; sys.path.insert(0, {SRC!r}); '
             "from emobridge.features import FeatureStore; import pathlib; "
             f"s = FeatureStore('$D'); print('entries', int(s.list()['entries'].sum())); "
             "print('tmp', [p.name for p in pathlib.Path('$D').rglob('*') if 'tmp' in p.name]); "
             "print('empty', [p.name for p in pathlib.Path('$D').rglob('*.f32') "
             "if p.stat().st_size == 0]); "
             "print('missing', len(s.missing(sys.argv[1], sys.argv[2])))\" "
             f"{small} {SPEC}")
    setup = (f'mount -t tmpfs -o size=256k none "$D" && '
             f'{sys.executable} -m emobridge.cli features extract {small} -e {SPEC} -o "$D" '
             f'>/dev/null && {sys.executable} -m emobridge.cli features extract {big} -e {SPEC} '
             f'-o "$D" 2>{tmp_path / "err.txt"}; echo "rc=$?"; {check}; true')
    proc = namespace(store, setup, "--version")
    assert "rc=1" in proc.stdout, proc.stdout + proc.stderr
    err = (tmp_path / "err.txt").read_text().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: feature store ")
    assert "No space left on device" in err[0] and str(store) in err[0]
    # The two entries stored before are intact; nothing half-written is indexed or left.
    assert "entries 2" in proc.stdout and "tmp []" in proc.stdout and "empty []" in proc.stdout
    assert "missing 0" in proc.stdout


def test_garbage_spec_json_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _manifest(tmp_path, 2)
    store = tmp_path / "store"
    FeatureStore(store).extract(manifest, SPEC, progress=False)
    bad = store / "logmel-000000000000"
    bad.mkdir()
    (bad / "spec.json").write_bytes(b"\x00garbage{")
    assert main(["features", "list", str(store)]) == 0
    captured = capsys.readouterr()
    assert build_extractor(SPEC).id in captured.out
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"warning: {bad / 'spec.json'}: unreadable extractor spec")
    with pytest.raises(FeatureError, match="spec.json: unreadable extractor spec"):
        FeatureStore(store).spec(bad.name)
    (bad / "spec.json").write_text("[1, 2]")
    with pytest.raises(FeatureError, match="not an extractor spec"):
        FeatureStore(store).load(manifest, bad.name)


def test_damaged_index_is_reported_by_name_and_recomputed(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, 3)
    store = FeatureStore(tmp_path / "store")
    ext = build_extractor(SPEC)
    store.extract(manifest, ext, progress=False)
    index = next((tmp_path / "store" / ext.id).glob("shard-*.json"))
    index.write_text('{"hash": [1, 2')
    with pytest.warns(EmobridgeWarning, match=f"{index.name}: damaged feature index"):
        report = FeatureStore(tmp_path / "store").extract(manifest, ext, progress=False)
    assert report.computed == 3


@pytest.mark.parametrize("content", [
    b"PAR1 not json",
    b'{"format": 99, "columns": [], "rows": []}',
    b'{"format": 1, "columns": ["path", "size", "mtime_ns", "hash"], "rows": []}',
    b'{"format": 1, "columns": ["path", "size", "mtime_ns", "ctime_ns", "ino", "hash"], '
    b'"rows": [["a.wav", "12", 1, 2, 3, "00"]]}',
])
def test_damaged_hash_cache_is_reported_and_rehashed(tmp_path: Path, content: bytes) -> None:
    manifest = _manifest(tmp_path, 2)
    FeatureStore(tmp_path / "store").extract(manifest, SPEC, progress=False)
    (tmp_path / "store" / "hashes.json").write_bytes(content)
    with pytest.warns(EmobridgeWarning, match="hashes.json: unreadable hash cache"):
        report = FeatureStore(tmp_path / "store").extract(manifest, SPEC, progress=False)
    assert report.reused == 2
    cached = json.loads((tmp_path / "store" / "hashes.json").read_text())  # rewritten
    assert len(cached["rows"]) == 2


def test_audio_rewritten_in_place_with_its_mtime_restored(tmp_path: Path) -> None:
    """Same size, same mtime, other content: the cache must not return the old features."""
    path = write_tone(tmp_path / "a.wav", duration_s=0.5, f0_hz=120, seed=1)
    store = FeatureStore(tmp_path / "store")
    before = store.load([path], SPEC, compute_missing=True)[0]
    st = os.stat(path)
    replacement = write_tone(tmp_path / "b.wav", duration_s=0.5, f0_hz=300, seed=2)
    data = replacement.read_bytes()
    assert len(data) == st.st_size
    with open(path, "r+b") as fh:  # in place: same inode
        fh.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        after = FeatureStore(tmp_path / "store").load([path], SPEC, compute_missing=True)[0]
    assert not np.allclose(before, after)
    fresh = FeatureStore(tmp_path / "fresh").load([path], SPEC, compute_missing=True)[0]
    np.testing.assert_array_equal(after, fresh)


def test_parquet_hash_cache_of_an_older_version_is_ignored(tmp_path: Path) -> None:
    """Earlier versions kept the hash cache in hashes.parquet: it is neither read (its hash
    here is wrong, and would be served if it were) nor a fault, and it is left in place."""
    path = write_tone(tmp_path / "a.wav", duration_s=0.3)
    root = tmp_path / "store"
    root.mkdir()
    st = os.stat(path)
    old = root / "hashes.parquet"
    try:
        import pandas as pd

        pd.DataFrame({"path": [str(path)], "size": [st.st_size], "mtime_ns": [st.st_mtime_ns],
                      "ctime_ns": [st.st_ctime_ns], "ino": [st.st_ino],
                      "hash": ["0" * 32]}).to_parquet(old)
    except ImportError:  # no pyarrow here: its first bytes are enough to be ignored
        old.write_bytes(b"PAR1\x15\x04")
    before = old.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = FeatureStore(root).extract([path], SPEC, progress=False)
        again = FeatureStore(root).extract([path], SPEC, progress=False)
    assert report.computed == 1 and again.reused == 1
    cached = json.loads((root / "hashes.json").read_text())
    assert cached["columns"] == ["path", "size", "mtime_ns", "ctime_ns", "ino", "hash"]
    assert [row[0] for row in cached["rows"]] == [str(path)]
    assert cached["rows"][0][-1] != "0" * 32
    assert old.read_bytes() == before
