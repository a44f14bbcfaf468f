"""Reproduce the bars: simple frozen-feature baselines, whole source -> whole target corpus.

- frozen Whisper-base mean embedding + logistic regression, raw and with each corpus
  z-scored on its own statistics;
- eGeMAPSv02 functionals + SVM (RBF) with per-speaker standardisation.

4 classes, UA/WA on the whole target corpus. Writes the ``bars`` section of RESULTS.md::

    .venv/bin/python benchmarks/bench_bars.py [--corpora ../shared/corpora]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from _common import BARS, DEFAULT_CORPORA, HERE, extract_features, load_manifest, write_section

PAIRS = [("ravdess", "emodb"), ("emodb", "emovo"), ("ravdess", "emovo")]


def zscore_by(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for g in np.unique(groups):
        idx = groups == g
        out[idx] = StandardScaler().fit_transform(x[idx])
    return out


def main(argv: list[str] | None = None) -> None:
    from emobridge.metrics import unweighted_average_recall, weighted_accuracy

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    p.add_argument("--store", type=Path, default=HERE.parent / "cache" / "features")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    names = sorted({n for pair in PAIRS for n in pair})
    manifests = {n: load_manifest(args.corpora, n) for n in names}
    feats = {
        "whisper": extract_features(args.store, manifests,
                                    "whisper:model=base,backend=ct2,pooling=mean", args.workers),
        "egemaps": extract_features(args.store, manifests,
                                    "opensmile:feature_set=eGeMAPSv02", args.workers),
    }
    rows = ["| source -> target | Whisper mean + LR | + per-corpus z | eGeMAPS + SVM per-speaker |"
            " bars (LR / z / SVM) |", "|---|---|---|---|---|"]
    for src, tgt in PAIRS:
        ys = manifests[src]["label_index"].to_numpy()
        yt = manifests[tgt]["label_index"].to_numpy()
        cells = []
        xs, xt = np.stack(feats["whisper"][src]), np.stack(feats["whisper"][tgt])
        scaler = StandardScaler().fit(xs)
        for a, b in ((scaler.transform(xs), scaler.transform(xt)),
                     (StandardScaler().fit_transform(xs), StandardScaler().fit_transform(xt))):
            clf = LogisticRegression(max_iter=2000, C=1.0).fit(a, ys)
            pred = clf.predict(b)
            cells.append(f"{100 * unweighted_average_recall(yt, pred):.1f} "
                         f"(WA {100 * weighted_accuracy(yt, pred):.1f})")
        es, et = np.stack(feats["egemaps"][src]), np.stack(feats["egemaps"][tgt])
        es = zscore_by(es, manifests[src]["speaker"].to_numpy())
        et = zscore_by(et, manifests[tgt]["speaker"].to_numpy())
        pred = SVC(C=1.0, kernel="rbf").fit(es, ys).predict(et)
        cells.append(f"{100 * unweighted_average_recall(yt, pred):.1f} "
                     f"(WA {100 * weighted_accuracy(yt, pred):.1f})")
        bar = BARS.get((src, tgt))
        bar_txt = " / ".join(f"{b:.1f}" for b in bar) if bar else "–"
        rows.append(f"| {src} -> {tgt} | " + " | ".join(cells) + f" | {bar_txt} |")
    body = "\n".join([
        "## Bars: frozen-feature baselines (whole source -> whole target, 4 classes, UA %)",
        "",
        "Measured by `benchmarks/bench_bars.py` on 2 CPU cores "
        f"({time.perf_counter() - t0:.0f} s with a warm feature cache). The last column gives "
        "the bars quoted in DEVELOPERS' guide for comparison.",
        "",
        *rows,
    ])
    write_section("bars", body)
    print(body)


if __name__ == "__main__":
    main()
