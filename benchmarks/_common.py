"""Shared pieces of the benchmark scripts: corpus manifests, features, RESULTS.md sections."""

from __future__ import annotations

import re
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "RESULTS.md"
DEFAULT_CORPORA = REPO.parent / "shared" / "corpora"
sys.path.insert(0, str(REPO / "src"))

#: The bars every method must clear (4 classes, whole source corpus -> whole target corpus,
#: UA %): (frozen Whisper-base mean + logistic regression, same with per-corpus z-scoring,
#: eGeMAPS + SVM with per-speaker scaling).
BARS: dict[tuple[str, str], tuple[float, float, float]] = {
    ("ravdess", "emodb"): (43.6, 46.0, 56.0),
    ("emodb", "emovo"): (48.2, 59.2, 63.7),
}


#: Corpus folders of ../shared/corpora named otherwise than their reader.
FOLDERS = {"emotiontts": "emotiontts_ko"}


def load_manifest(corpora: Path, name: str, limit: int | None = None,
                  label_set: str = "4class",
                  mapping: dict[str, str] | None = None) -> pd.DataFrame:
    """Scan ``corpora/name`` (or its :data:`FOLDERS` entry) with its reader and map it to
    ``label_set`` (``mapping``: the label set's extra FROM -> TO mapping).

    ``limit`` keeps a class-stratified subset (seed 0) for smoke runs.
    """
    from emobridge.corpora import LabelSet, get_reader

    folder = corpora / FOLDERS.get(name, name)
    if not folder.is_dir():
        raise SystemExit(f"no corpus folder {folder}")
    scan = get_reader(name)(folder).scan()
    if scan.problems:
        raise SystemExit(f"{name}: {len(scan.problems)} unusable files, first: "
                         f"{scan.problems[0].path}: {scan.problems[0].reason}")
    manifest, _ = LabelSet.named(label_set, mapping).apply(scan.manifest)
    if limit is not None and limit < len(manifest):
        rng = np.random.default_rng(0)
        per_class = max(1, limit // manifest["emotion"].nunique())
        keep: list[int] = []
        for _, rows in manifest.groupby("emotion", sort=True):
            keep.extend(rng.permutation(rows.index.to_numpy())[:per_class])
        manifest = manifest.loc[sorted(keep)].reset_index(drop=True)
    return manifest


def extract_features(store_root: Path, manifests: dict[str, pd.DataFrame], spec: str,
                     workers: int = 2) -> dict[str, list[np.ndarray]]:
    """Fill the feature store for every manifest and load each one's features."""
    from emobridge.features.registry import build_extractor
    from emobridge.features.store import FeatureStore

    store = FeatureStore(store_root)
    ext = build_extractor(spec)
    everything = pd.concat(list(manifests.values()), ignore_index=True)
    t0 = time.perf_counter()
    report = store.extract(everything, ext, workers=workers, progress=True)
    print(f"  {spec}: {report.summary()} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {name: store.load(m, ext) for name, m in manifests.items()}


def write_section(name: str, body: str, results: Path = RESULTS) -> None:
    """Replace (or append) the ``<!-- name:start -->...<!-- name:end -->`` block, atomically."""
    from emobridge.fileio import write_text_atomic

    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    old = results.read_text(encoding="utf-8") if results.exists() else "# Benchmark results\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(old):
        new = pattern.sub(lambda _: block, old)
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    write_text_atomic(results, new)


def mean_std(values: list[float]) -> str:
    """``mean +- std`` in percent of fractions in [0, 1]."""
    arr = 100 * np.asarray(values, dtype=float)
    return f"{arr.mean():.1f} ± {arr.std():.1f}" if len(arr) > 1 else f"{arr.mean():.1f}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a benchmark's server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (NaN when /proc does not say)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
