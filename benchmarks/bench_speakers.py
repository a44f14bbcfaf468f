"""Speaker estimation from GE2E embeddings, leave one corpus out (section ``speakers``).

For every corpus X of five, everything is chosen on the other four: the emotion-blind
projection is learned on their labelled data, and the configuration (emotion directions
removed, speaker-LDA dimensions, preference for coarse k) is the grid's best by a downstream
proxy when each of the four is held out in turn (projection learned on the remaining three).

Downstream proxy ("proxy UA"): the recipe's layer-3 block of
``whisper:backend=torch,layer=[2,3,4],pooling=mean,level=rms``, z-scored per true speaker on
the labelled corpora and per *estimated* group on the held-out one, one class-balanced logistic
regression (C = 0.1), no self-training; UA on the held-out corpus. References: one group
(per-corpus z) and the true speakers. The lead's measure is the full recipe's UA.

Reported per corpus: estimated k vs true speaker count, purity, NMI with speaker and with
emotion, proxy UA, for plain Ward + silhouette on raw GE2E and for the chosen design.

Run: ``.venv/bin/python benchmarks/bench_speakers.py [CORPORA]`` (GE2E and the Whisper
features are extracted into ``cache/features`` when missing).
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from _common import DEFAULT_CORPORA, REPO, extract_features, load_manifest, write_section
from emobridge.inference.speakers import (
    DEFAULT_CONFIG,
    ClusterConfig,
    cluster_scores,
    estimate_speakers_with,
)

CORPORA = ("emodb", "ravdess", "emovo", "ased", "emotiontts")
STORE = REPO / "cache" / "features"
SPEC = "ge2e"
EMOTION_SPEC = "whisper:backend=torch,layer=[2,3,4],pooling=mean,level=rms"
LAYER3 = slice(512, 1024)  # the recipe's best single block
#: The grid chosen from, inside each leave-one-corpus-out fold.
GRID = [replace(DEFAULT_CONFIG, emotion_dims=e, speaker_dims=d, coarse_tolerance=t)
        for e, d, t in itertools.product([0, 3, 8], [16, 32], [0.6, 1.0])]
BASELINE = ClusterConfig(k_rule="silhouette")
MIN_CLUSTER = 8
#: One-speaker folders that may still be split (fallback threshold, see ``_threshold``).
SINGLE_SPLIT_QUANTILE = 0.9

#: corpus -> (GE2E, speakers, emotion indices, layer-3 Whisper features)
DATA: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}


def _zscore(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for g in np.unique(groups):
        rows = groups == g
        out[rows] = (x[rows] - x[rows].mean(0)) / (x[rows].std(0) + 1e-8)
    return out


@cache
def _classifier(sources: tuple[str, ...]):
    """Logistic regression on ``sources``, z-scored per true speaker (cached per source set)."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([_zscore(DATA[s][3], DATA[s][1]) for s in sources])
    y = np.concatenate([DATA[s][2] for s in sources])
    return LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000).fit(x, y)


def proxy_ua(sources: tuple[str, ...], target: str, groups: np.ndarray) -> float:
    """UA on ``target`` with its features z-scored per ``groups`` (see the module docstring)."""
    from sklearn.metrics import balanced_accuracy_score

    pred = _classifier(sources).predict(_zscore(DATA[target][3], groups))
    return float(balanced_accuracy_score(DATA[target][2], pred))


def _run(target: str, sources: tuple[str, ...], config: ClusterConfig) -> dict[str, float]:
    x, spk, emo, _ = DATA[target]
    kwargs = {}
    if sources:
        kwargs = {"source_embeddings": np.concatenate([DATA[s][0] for s in sources]),
                  "source_speakers": np.concatenate([DATA[s][1] for s in sources]),
                  "source_labels": np.concatenate([DATA[s][2] for s in sources])}
    est = estimate_speakers_with(x, config, min_cluster_size=MIN_CLUSTER, seed=0, **kwargs)
    clf_sources = sources or tuple(c for c in CORPORA if c != target)
    return {**cluster_scores(est.speakers, spk, emo), "fallback": est.fallback is not None,
            "ua": proxy_ua(clf_sources, target, est.speakers)}


def _choose(held_out: str) -> tuple[ClusterConfig, float]:
    """The grid's best configuration by mean proxy UA over inner leave-one-corpus-out folds
    on the other four corpora (``held_out`` is never read)."""
    four = [c for c in CORPORA if c != held_out]
    best, best_score = GRID[0], -np.inf
    for config in GRID:
        score = float(np.mean([_run(inner, tuple(c for c in four if c != inner), config)["ua"]
                               for inner in four]))
        if score > best_score + 1e-9:  # ties keep the earlier (coarser, simpler) entry
            best, best_score = config, score
    return best, best_score


def _single_excess(target: str, sources: tuple[str, ...]) -> list[float]:
    """Best silhouette excess of every one-speaker folder of ``target`` (what a threshold must
    stay above so that a one-speaker folder is not split; -1 where no k is admissible)."""
    x, spk, _, _ = DATA[target]
    src = {"source_embeddings": np.concatenate([DATA[s][0] for s in sources]),
           "source_speakers": np.concatenate([DATA[s][1] for s in sources]),
           "source_labels": np.concatenate([DATA[s][2] for s in sources])}
    out = []
    for s in np.unique(spk):
        est = estimate_speakers_with(x[spk == s], replace(DEFAULT_CONFIG, min_excess=0.0),
                                     min_cluster_size=MIN_CLUSTER, seed=0, **src)
        out.append(max(est.details.get("excess", {"": -1.0}).values()))
    return out


def _threshold(held_out: str) -> float:
    """``min_excess`` for ``held_out``: the 90th percentile of the one-speaker folders' best
    excess on the other four corpora (inner projections exclude ``held_out`` too)."""
    four = [c for c in CORPORA if c != held_out]
    values = [v for inner in four
              for v in _single_excess(inner, tuple(c for c in four if c != inner))]
    return float(np.quantile(values, SINGLE_SPLIT_QUANTILE))


def _timing(manifest: pd.DataFrame, n: int = 60) -> tuple[float, float]:
    """Seconds of GE2E compute per hour of audio (decoding excluded), on ``n`` files."""
    import torch

    from emobridge.audio import load_audio
    from emobridge.features.registry import build_extractor

    torch.set_num_threads(2)
    waves = [load_audio(p, 16_000) for p in manifest["path"].iloc[:n]]
    ext = build_extractor(SPEC)
    ext.load()
    t0 = time.perf_counter()
    for s in range(0, len(waves), 16):
        ext.extract_batch(waves[s: s + 16], 16_000)
    return (time.perf_counter() - t0) / (sum(map(len, waves)) / 16_000 / 3600), \
        sum(map(len, waves)) / 16_000


def _cells(n_true: int, r: dict[str, float]) -> str:
    k = f"{r['k']}" + (" (fallback)" if r["fallback"] else "")
    return (f"| {k} / {n_true} | {100 * r['purity']:.1f} | {r['nmi_speaker']:.2f} "
            f"| {r['nmi_emotion']:.2f} | {100 * r['ua']:.1f} ")


def _load(corpora: Path) -> dict[str, pd.DataFrame]:
    manifests = {c: load_manifest(corpora, c) for c in CORPORA}
    ge2e = extract_features(STORE, manifests, SPEC)
    whisper = extract_features(STORE, manifests, EMOTION_SPEC)
    for c in CORPORA:
        DATA[c] = (np.stack(ge2e[c]), manifests[c]["speaker"].astype(str).to_numpy(),
                   manifests[c]["label_index"].to_numpy(), np.stack(whisper[c])[:, LAYER3])
    return manifests


HEADER = """## Speaker estimation from GE2E (leave one corpus out)

`bench_speakers.py`: 4-class manifests, GE2E embeddings (`ge2e`, Resemblyzer 0.1.4 weights),
min cluster size {min_cluster}. **Plain**: Ward on raw GE2E, k in 2..30 by the best silhouette.
**Design**: `estimate_speakers` (projection learned on the other four corpora; emotion
directions removed, PCA 64, speaker LDA; Ward; k = coarsest whose silhouette excess over
Gaussian data reaches `coarse_tolerance` x the best; one group when no excess reaches `min excess`),
configuration chosen by inner leave-one-corpus-out on the other four by proxy UA, and the
fallback threshold (min excess) as the 90th percentile of the best excess of the other four
corpora's one-speaker folders (each speaker's utterances alone), so that about 1 in 10
one-speaker folders is still split. "1-speaker folders split": how many of the held-out
corpus's speakers, each taken alone, the design splits (they should all give one group).
Cells: k
estimated / true speakers, purity %, NMI with speaker, NMI with emotion, proxy UA % (layer-3
Whisper block, LR C=0.1, z-scored per estimated group; no self-training, so below the recipe).

| corpus | plain k | purity | NMI spk | NMI emo | UA | design k | purity | NMI spk | NMI emo \
| UA | UA 1 group | UA true spk | 1-speaker folders split | chosen: emotion dims, LDA dims, \
tolerance, min excess (inner UA) |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"""


def _fold(c: str) -> str:
    """One table row: corpus ``c`` held out."""
    others = tuple(o for o in CORPORA if o != c)
    n_true = len(np.unique(DATA[c][1]))
    plain = _run(c, (), BASELINE)
    config, inner = _choose(c)
    config = replace(config, min_excess=round(_threshold(c), 3))
    design = _run(c, others, config)
    singles = np.array(_single_excess(c, others))
    split = f"{int((singles >= config.min_excess).sum())} / {len(singles)}"
    one = proxy_ua(others, c, np.zeros(len(DATA[c][1])))
    true = proxy_ua(others, c, DATA[c][1])
    row = (f"| {c} " + _cells(n_true, plain) + _cells(n_true, design)
           + f"| {100 * one:.1f} | {100 * true:.1f} | {split} | {config.emotion_dims}, "
           f"{config.speaker_dims}, {config.coarse_tolerance:g}, {config.min_excess:g} "
           f"({100 * inner:.1f}) |")
    print(row, flush=True)
    return row


def main(corpora: Path = DEFAULT_CORPORA, processes: int = 2) -> None:
    import multiprocessing

    manifests = _load(corpora)
    t_all = time.perf_counter()
    # Folds are independent: one process per core (forked, so DATA is shared).
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        rows = pool.map(_fold, CORPORA, chunksize=1)
    minutes = (time.perf_counter() - t_all) / 60
    per_hour, timed_s = _timing(manifests["emodb"])
    lines = [HEADER.format(min_cluster=MIN_CLUSTER), *rows, "",
             f"Clustering, inner selection and proxy: {minutes:.1f} min ({processes} processes "
             f"on 2 CPU cores). GE2E on 2 CPU cores: {per_hour:.0f} s of compute per hour of "
             f"audio (EMO-DB, {timed_s:.0f} s of audio, decoding excluded, batches of 16 files, "
             "2 torch threads)."]
    body = "\n".join(lines)
    print(body)
    write_section("speakers", body)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CORPORA)
