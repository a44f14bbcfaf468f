"""Ctrl-C during ``emobridge features extract``: exit 130, "interrupted", completed entries kept.

Real subprocesses receiving a real SIGINT, as a user's terminal sends it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from emobridge.corpora import make_manifest, write_manifest
from emobridge.features import FeatureStore, build_extractor
from emobridge.features.extractors._common import defer_interrupts
from tests.conftest import write_tone

SRC = str(Path(__file__).resolve().parents[1] / "src")
N_FILES = 24


def _manifest(tmp_path: Path, n: int) -> Path:
    paths = [write_tone(tmp_path / "audio" / f"u{i:03d}.wav", duration_s=0.5,
                        f0_hz=100 + i, seed=i) for i in range(n)]
    df = make_manifest(
        {"path": str(p), "corpus": "toy", "language": "it", "speaker": "toy:1", "gender": "f",
         "label": "neu", "emotion": "neutral", "duration_s": 0.5, "sample_rate": 16_000}
        for p in paths)
    return write_manifest(df, tmp_path / "manifest.csv")[0]


def _whisper_available() -> bool:
    from emobridge.features.whisper_assets import offline_whisper_available

    return offline_whisper_available()


def _interrupt_extraction(manifest: Path, store: Path, spec: str, after: int,
                          extra: list[str]) -> subprocess.CompletedProcess[str]:
    """Start ``features extract``, send SIGINT once ``after`` utterances are done."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    err_path = store.parent / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "emobridge.cli", "features", "extract", str(manifest),
             "-e", spec, "-o", str(store), "--batch-size", "1", "--progress", *extra],
            stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            done = re.findall(r"\| *(\d+)/\d+ \[", err_path.read_text())
            if done and int(done[-1]) >= after:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "extraction ended before the interrupt: use more files"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err_path.read_text())


@pytest.mark.parametrize("spec", [
    "opensmile:feature_set=ComParE_2016",
    pytest.param("whisper", marks=[  # the path of issue 10's report; slower to start
        pytest.mark.slow,
        pytest.mark.skipif(not _whisper_available(), reason="offline Whisper base not installed"),
    ]),
])
def test_ctrl_c_during_extraction(tmp_path: Path, spec: str) -> None:
    manifest = _manifest(tmp_path, N_FILES)
    store = tmp_path / "store"
    proc = _interrupt_extraction(manifest, store, spec, after=3, extra=["--skip-errors"])
    assert proc.returncode == 130, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.endswith("interrupted")
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr
    assert "computed" not in proc.stdout  # no report claiming a finished run
    # Completed entries were kept, each intact; nothing half-written is left behind.
    ext = build_extractor(spec)
    fs = FeatureStore(store)
    missing = fs.missing(manifest, ext)
    assert 3 <= N_FILES - len(missing) < N_FILES
    done = [p for p in map(str, sorted((tmp_path / "audio").iterdir())) if p not in missing]
    feats = fs.load(done, ext)
    assert all(np.isfinite(f).all() for f in feats)
    assert not [p for p in store.rglob("*") if ".tmp" in p.name]
    # A second run computes only the rest.
    report = fs.extract(manifest, ext, progress=False)
    assert (report.computed, report.reused) == (len(missing), N_FILES - len(missing))


def test_defer_interrupts_raises_after_the_block() -> None:
    """SIGINT inside the block is held back, then raised; the block's own error gives way."""
    trace: list[str] = []
    with pytest.raises(KeyboardInterrupt), defer_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler has run by now, and raised nothing
        trace.append("block finished")
        raise ValueError("NaN features, caused by the interrupt")
    assert trace == ["block finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with defer_interrupts():  # no interrupt: nothing raised
        trace.append("quiet")
    assert trace[-1] == "quiet"
