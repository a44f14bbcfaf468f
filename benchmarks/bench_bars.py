"""The bars and the methods under the bars' own protocol: whole source -> whole target corpus.

Bars (reproduced first, so the comparison uses the same manifests and features):

- frozen Whisper-base mean embedding + logistic regression, raw and with each corpus
  z-scored on its own statistics;
- eGeMAPSv02 functionals + SVM (RBF) with per-speaker standardisation.

Then emobridge's methods on the same frozen features (MLP head, per-speaker z-scoring, class-
balanced loss, 3 seeds): the target corpus is the unlabelled adaptation set and the test set;
no target label is read by any method (k = 0; no early stopping on target labels).

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

from _common import (
    BARS,
    DEFAULT_CORPORA,
    HERE,
    extract_features,
    load_manifest,
    mean_std,
    write_section,
)

PAIRS = [("ravdess", "emodb"), ("emodb", "emovo"), ("ravdess", "emovo")]


def zscore_by(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for g in np.unique(groups):
        idx = groups == g
        out[idx] = StandardScaler().fit_transform(x[idx])
    return out


#: (label, method, params): every method at k = 0 on the bars' protocol.
METHODS: list[tuple[str, str, dict]] = [
    ("source_only", "source_only", {}),
    ("dann", "dann", {"domain_weight": 1.0}),
    ("nnpm (classifier)", "nnpm", {"pretrain_epochs": 40, "epochs": 15}),
    ("nnpm (memory vote)", "nnpm", {"pretrain_epochs": 40, "epochs": 15,
                                    "prediction": "memory_vote"}),
    ("pseudo_label hard", "pseudo_label", {"mode": "hard", "pseudo_label_every_epochs": 20}),
    ("pseudo_label soft", "pseudo_label", {"mode": "soft", "pseudo_label_every_epochs": 20}),
]
COMMON = {"normalise": "per_speaker", "class_weight": "balanced", "epochs": 60,
          "patience": 1000, "progress": False, "device": "cpu"}


def methods_table(manifests: dict, feats: dict, seeds: list[int]) -> str:
    """UA (mean +- std over seeds) of every method, whole source -> whole target."""
    import torch

    from emobridge.methods import EmotionData, build_method
    from emobridge.metrics import unweighted_average_recall

    torch.set_num_threads(1)
    classes = ("anger", "happiness", "neutral", "sadness")
    header = "| method | " + " | ".join(f"{f}: {s} -> {t}" for f in feats for s, t in PAIRS[:2])
    lines = ["### emobridge methods on the same protocol (UA %, mean ± std over "
             f"{len(seeds)} seeds)", "",
             "Frozen features, MLP head, per-speaker z-scoring, k = 0 target labels. Bars for "
             "comparison: ravdess -> emodb 43.6 / 46.0 / 56.0, emodb -> emovo 48.2 / 59.2 / "
             "63.7.", "", header + " |", "|---" * (1 + 2 * len(feats)) + "|"]
    for label, name, params in METHODS:
        cells = []
        for feat in feats:
            data = {n: EmotionData.from_manifest(m, feats[feat][n], classes)
                    for n, m in manifests.items()}
            for src, tgt in PAIRS[:2]:
                scores = []
                for seed in seeds:
                    method = build_method(name, seed=seed, **{**COMMON, **params})
                    method.fit(data[src], data[tgt].without_labels())
                    scores.append(unweighted_average_recall(data[tgt].labels,
                                                            method.predict(data[tgt])))
                cells.append(mean_std(scores))
                print(f"  {label} {feat} {src}->{tgt}: {cells[-1]}", flush=True)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from emobridge.metrics import unweighted_average_recall, weighted_accuracy

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    p.add_argument("--store", type=Path, default=HERE.parent / "cache" / "features")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
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
        "the bars quoted in the project brief, for comparison.",
        "",
        *rows,
    ])
    body += "\n\n" + methods_table(manifests, feats, args.seeds)
    body += f"\n\nTotal time {time.perf_counter() - t0:.0f} s."
    write_section("bars", body)
    print(body)


if __name__ == "__main__":
    main()
