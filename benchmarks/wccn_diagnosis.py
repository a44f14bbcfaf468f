"""Why a classical WCCN hurts the random forest across languages (issue 12's "if not, why").

    .venv/bin/python benchmarks/wccn_diagnosis.py [--corpora ../shared/corpora]

For each held-out language (whole corpora: train on the other two, 4 classes, eGeMAPS and
emobase from the feature store, raw functionals as the paper's rows), before and after
the WCCN fitted on the training languages, in the coordinates the trees split on: the median
over dimensions of the shift between the training and held-out means in units of that
dimension's within-class standard deviation (``|mu_train - mu_test| / sqrt(W_jj)``), the
share of held-out values outside the training range of their dimension, the share of
held-out utterances in the forest's most frequent predicted class, and UA. WCCN whitens the
within-class covariance: directions in which emotions vary little inside a corpus but the
corpora differ (channel, level, speaker set) are scaled up and mixed into every coordinate,
so the held-out corpus lands away from the thresholds the trees learnt. Prints a Markdown
table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _common import DEFAULT_CORPORA, REPO, extract_features, load_manifest

LOLO = {"emodb": "DE", "ravdess": "EN", "emovo": "IT"}
SPECS = {"eGeMAPS": "opensmile:feature_set=eGeMAPSv02", "emobase": "opensmile:feature_set=emobase"}


def stats(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray) -> tuple[float, float]:
    """Median per-dimension mean shift in within-class std units; share of test values out
    of the training range."""
    within = np.mean([x_tr[y_tr == c].var(axis=0) for c in np.unique(y_tr)], axis=0)
    shift = np.median(np.abs(x_tr.mean(0) - x_te.mean(0)) / np.sqrt(within + 1e-12))
    lo, hi = x_tr.min(0), x_tr.max(0)
    return float(shift), float(np.mean((x_te < lo) | (x_te > hi)))


def main() -> None:
    from emobridge.methods import EmotionData, build_method
    from emobridge.metrics import unweighted_average_recall

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    ap.add_argument("--store", type=Path, default=REPO / "cache" / "features")
    args = ap.parse_args()
    classes = ("anger", "happiness", "neutral", "sadness")
    manifests = {n: load_manifest(args.corpora, n) for n in LOLO}
    print("| features | held out | WCCN | median shift per dimension (within-class std) | "
          "test values out of range | largest predicted class | UA |\n"
          "|---|---|---|---|---|---|---|")
    for fname, spec in SPECS.items():
        feats = extract_features(args.store, manifests, spec)
        data = {n: EmotionData.from_manifest(manifests[n], feats[n], classes) for n in LOLO}
        for held, lang in LOLO.items():
            train = EmotionData.concat([data[n] for n in LOLO if n != held])
            test = data[held]
            for wccn in (False, True):
                rf = build_method("random_forest", wccn=wccn, normalise="none",
                                  seed=0).fit(train)
                x_tr, x_te = rf.embed(train), rf.embed(test)
                shift, out = stats(x_tr, train.labels, x_te)
                pred = rf.predict(test)
                top = np.bincount(pred, minlength=len(classes)).max() / len(pred)
                ua = 100 * unweighted_average_recall(test.labels, pred)
                print(f"| {fname} | {lang} | {'yes' if wccn else 'no'} | {shift:.2f} | "
                      f"{100 * out:.1f} % | {100 * top:.0f} % | {ua:.1f} |", flush=True)


if __name__ == "__main__":
    main()
