"""Semi-supervised cross-lingual adaptation with pseudo-labels (Agarla et al.): the shape of the
paper's Figure 3 (target / source UA against k labelled target utterances, hard vs soft
pseudo-labels) and Table 8 (without / with utterance rebalancing), on real corpora.

Protocol
    English (RAVDESS) -> German (EMO-DB) and English -> Italian (EMOVO), label set ``4class``
    (anger, happiness, neutral, sadness; RAVDESS calm is dropped, not mapped). Every corpus is
    split by speaker 60 / 20 / 20 into train / validation / test (``emobridge.protocols.
    speaker_split``, gender-stratified, the seed of the run; the paper follows SERAB), and all
    six pieces are checked for shared speakers. Features: frozen Whisper-base, mean-pooled last
    layer (``whisper:pooling=mean``, CTranslate2 int8, cached in a ``FeatureStore``), an MLP
    head (one hidden layer of 256), per-corpus z-scoring (statistics of the training pieces:
    source train and target train, labels unused).

    Conditions per pair and seed (all :class:`emobridge.methods.pseudo_label.PseudoLabel`, so
    they share the training protocol: Adam 1e-3 x 0.95 every 10 epochs, batches of 100,
    ``--epochs`` epochs, best epoch by the mean of source and target validation UA):

    - *lower bound*: source labels only (no pseudo-labelling; the unlabelled target train
      only feeds the z-scoring statistics);
    - *upper bound*: source + every labelled target training utterance, no rebalancing (the
      paper's multi-lingual setting);
    - ``k`` in ``--ks`` labelled target utterances (``protocols.few_shot_subset``: stratified,
      from the target training speakers) x {hard, soft} x {with, without rebalancing}, the
      rest of the target training speakers' utterances unlabelled, pseudo-labelled every
      ``--every`` epochs (tau 0.5, lambda_A 0.8, lambda_H 0.4, mixup with U(0, 1)).

    Reported: UA on the target test speakers and on the held-out source test speakers, mean
    +- std over ``--seeds``, and for the pseudo-labelled pool its final size and accuracy (read
    from the hidden true labels, for the analysis only). Bars to clear (frozen Whisper-base
    mean + logistic regression, whole corpus -> whole corpus, so not the same test set) are
    printed beside the figures.

Budget: 2 pairs x 3 seeds x (2 bounds + 3 k x 2 modes x 2 rebalancing) = 84 fits of the MLP
head on ~400-800 vectors of 512 dims at the paper's E = 100, W = 30, plus the one-off Whisper
feature extraction of the three corpora (~1,350 files in ``4class``, a few minutes cold on 2
cores; reused from ``--store`` afterwards). A full-size fit (400 source, 100 labelled + 200
unlabelled target, 200 validation vectors) took 12 s with one torch thread on the shared
2-core machine at load average 8 (77 s with two threads there: tiny MLPs only lose from
thread oversubscription, hence ``--torch-threads 1``), so the whole run stays well under 30
minutes even on a busy machine; ``--epochs`` / ``--every`` lower E and W if needed.
The run writes its section
of ``benchmarks/RESULTS.md`` between ``<!-- semi:start -->`` and ``<!-- semi:end -->``
(atomically) and every fit's figures to ``benchmarks/out/semi_supervised.csv``.

Example (the full run; ``--limit 80 --ks 0 5 --seeds 0 --epochs 6 --every 2 --no-write`` is a
smoke test)::

    .venv/bin/python benchmarks/bench_semi_supervised.py ../shared/corpora --threads 2
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import write_section

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPORA = REPO / ".." / "shared" / "corpora"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
OUT_CSV = REPO / "benchmarks" / "out" / "semi_supervised.csv"
LANGUAGE_NAMES = {"ravdess": "English", "emodb": "German", "emovo": "Italian"}

#: Bars to clear: frozen Whisper-base mean + logistic regression, whole corpus -> whole corpus
#: UA (raw / z-scored per corpus), and eGeMAPS + SVM with per-speaker scaling.
BARS = {
    ("ravdess", "emodb"): "Whisper-base mean + LR 43.6 (46.0 z-scored per corpus); "
                          "eGeMAPS + SVM per-speaker scaling 56.0",
    ("ravdess", "emovo"): "no English -> Italian bar; EMO-DB -> EMOVO: Whisper-base mean + "
                          "LR 48.2 (59.2 z-scored), eGeMAPS + SVM per-speaker 63.7",
}


# --------------------------------------------------------------------------- data

def load_corpus(name: str, corpora: Path, store, spec: str, limit: int | None, threads: int):
    """Manifest (4class, RangeIndex) and its features as ``EmotionData``."""
    from emobridge.corpora import LabelSet, get_reader
    from emobridge.methods import EmotionData

    folder = corpora / name
    scan = get_reader(name)(folder).scan()
    if scan.problems:
        print(f"{name}: {len(scan.problems)} file(s) not read, e.g. {scan.problems[0]}")
    label_set = LabelSet.named("4class")
    manifest, report = label_set.apply(scan.manifest)
    print(f"{name}: {len(manifest)} utterances in 4class ({report.summary()})", flush=True)
    if limit is not None and limit < len(manifest):
        keep = np.sort(np.random.default_rng(0).permutation(len(manifest))[:limit])
        manifest = manifest.iloc[keep].reset_index(drop=True)
    if manifest.empty:
        raise SystemExit(f"no {name} utterances under {folder}")
    t0 = time.perf_counter()
    feats = store.load(manifest, spec, compute_missing=True, workers=threads, progress=True)
    print(f"{name}: features {feats[0].shape} in {time.perf_counter() - t0:.1f} s", flush=True)
    return manifest, EmotionData.from_manifest(manifest, feats, label_set.classes)


def rows_of(data, frame):
    return data.subset(frame.index.to_numpy())


# --------------------------------------------------------------------------- one pair, one seed

def run_pair(source_name: str, target_name: str, corpora: dict, seed: int, args) -> list[dict]:
    """Every condition of one source -> target pair under one seed."""
    from emobridge.methods import EmotionData
    from emobridge.methods.pseudo_label import PseudoLabel
    from emobridge.metrics import unweighted_average_recall
    from emobridge.protocols import check_speaker_independence, few_shot_subset, speaker_split

    src_m, src_d = corpora[source_name]
    tgt_m, tgt_d = corpora[target_name]
    ratios = (0.6, 0.2, 0.2)
    s_split = speaker_split(src_m, ratios, seed=seed)
    t_split = speaker_split(tgt_m, ratios, seed=seed)
    check_speaker_independence({
        "source train": s_split.train, "source validation": s_split.validation,
        "source test": s_split.test, "target train": t_split.train,
        "target validation": t_split.validation, "target test": t_split.test})
    src_train, src_test = rows_of(src_d, s_split.train), rows_of(src_d, s_split.test)
    tgt_test = rows_of(tgt_d, t_split.test)
    validation = EmotionData.concat([rows_of(src_d, s_split.validation),
                                     rows_of(tgt_d, t_split.validation)])
    truth = dict(zip(tgt_d.ids, tgt_d.labels, strict=True))

    common: dict[str, Any] = dict(
        epochs=args.epochs, pseudo_label_every_epochs=args.every, normalise=args.normalise,
        backbone="mlp", backbone_params={"hidden_dims": [256], "dropout": 0.3},
        device=args.device, seed=seed)
    conditions: list[tuple[str, str, int, bool, dict]] = [
        ("lower bound", "-", 0, False, dict(pseudo_label_every_epochs=0)),
        ("upper bound", "-", -1, False, dict(pseudo_label_every_epochs=0, rebalance=False)),
    ]
    for k in args.ks:
        for mode in args.modes:
            for rebalance in (True, False):
                conditions.append((f"{mode} k={k}", mode, k, rebalance,
                                   dict(mode=mode, rebalance=rebalance)))
    rows = []
    for label, mode, k, rebalance, params in conditions:
        if k == -1:
            labelled, unlabelled = rows_of(tgt_d, t_split.train), None
            norm_only = None
        else:
            if k > len(t_split.train):
                print(f"  skip {label}: k={k} > {len(t_split.train)} target training "
                      "utterances", flush=True)
                continue
            few = few_shot_subset(t_split.train, k, seed=seed)
            rest = t_split.train.drop(index=few.index)
            labelled = rows_of(tgt_d, few) if k else None
            unlabelled = rows_of(tgt_d, rest).without_labels() if len(rest) else None
            norm_only = unlabelled
        t0 = time.perf_counter()
        method = PseudoLabel(**{**common, **params})
        if k == -1:
            method.fit(src_train, None, labelled, validation)
        elif params.get("pseudo_label_every_epochs") == 0:
            method.fit(src_train, norm_only, None, validation)
        else:
            method.fit(src_train, unlabelled, labelled, validation)
        fit_s = time.perf_counter() - t0
        pseudo_ids = method.pseudo_labelled_ids_
        pseudo_acc = float(np.mean([truth[i] == y for i, y in zip(
            pseudo_ids, method.pseudo_labels_.argmax(axis=1), strict=True)])) \
            if len(pseudo_ids) else float("nan")
        best = method.train_result_.best_epoch
        row = {
            "pair": f"{source_name}->{target_name}", "seed": seed, "condition": label,
            "mode": mode, "k": k if k >= 0 else len(t_split.train), "rebalance": rebalance,
            "target_ua": unweighted_average_recall(tgt_test.labels, method.predict(tgt_test)),
            "source_ua": unweighted_average_recall(src_test.labels, method.predict(src_test)),
            "best_epoch": best,
            "val_ua_source": method.history_[best - 1]["val_ua_source"] if best else np.nan,
            "val_ua_target": method.history_[best - 1]["val_ua_target"] if best else np.nan,
            "n_pseudo": len(pseudo_ids), "pseudo_acc": pseudo_acc,
            "n_unlabelled": 0 if unlabelled is None or k == -1 else len(unlabelled),
            "fit_s": fit_s,
        }
        rows.append(row)
        print(f"  seed {seed} {row['pair']} {label:14s} rebalance={rebalance!s:5s} "
              f"target UA {row['target_ua']:.3f} source UA {row['source_ua']:.3f} "
              f"pseudo {row['n_pseudo']} (acc {pseudo_acc:.2f}) {fit_s:.1f} s", flush=True)
    return rows


# --------------------------------------------------------------------------- report

def _cell(frame, column: str) -> str:
    if frame.empty:
        return "-"
    values = frame[column].to_numpy(dtype=float) * 100
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"


def render(results, args, seconds: float) -> str:
    import torch

    df = results
    n_seeds = df["seed"].nunique() if len(df) else 0
    lines = [
        "## Semi-supervised pseudo-labelling (`benchmarks/bench_semi_supervised.py`)",
        "",
        f"Agarla et al.'s method (`pseudo_label`) on frozen Whisper-base mean vectors "
        f"(`{args.extractor}`) with an MLP head; `4class`; every corpus split by speaker "
        f"60/20/20; UA in % on the target **test** speakers and on the held-out source test "
        f"speakers, mean ± std over {n_seeds} seed(s); {args.epochs} epochs, pseudo-labels "
        f"every {args.every}, tau 0.5, normalise `{args.normalise}`"
        + (f", `--limit {args.limit}` (smoke test, not a result)" if args.limit else "")
        + f". Run {time.strftime('%Y-%m-%d %H:%M')}, {seconds / 60:.1f} min in all "
        f"({args.threads} extraction thread(s), {args.torch_threads} torch thread(s), torch "
        f"{torch.__version__}).",
        "",
    ]
    for pair, part in df.groupby("pair", sort=False):
        src, tgt = pair.split("->")
        lines += [f"### {LANGUAGE_NAMES.get(src, src)} ({src}) -> "
                  f"{LANGUAGE_NAMES.get(tgt, tgt)} ({tgt})", "",
                  f"Bars (whole corpus -> whole corpus, a different test set): "
                  f"{BARS.get((src, tgt), '-')}.", "",
                  "Figure 3 shape (with rebalancing): target / source UA against k.", "",
                  "| k | hard: target | hard: source | soft: target | soft: source |",
                  "|---|---|---|---|---|"]
        for k in sorted(part.loc[part["mode"] != "-", "k"].unique()):
            cells = []
            for mode in ("hard", "soft"):
                sel = part[(part["mode"] == mode) & (part["k"] == k) & part["rebalance"]]
                cells += [_cell(sel, "target_ua"), _cell(sel, "source_ua")]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        for bound in ("lower bound", "upper bound"):
            sel = part[part["condition"] == bound]
            if len(sel):
                extra = " (source only)" if bound == "lower bound" else \
                    f" (all {int(sel['k'].iloc[0])} target train labels)"
                lines.append(f"| {bound}{extra} | {_cell(sel, 'target_ua')} | "
                             f"{_cell(sel, 'source_ua')} | | |")
        lines += ["", "Table 8 shape: without / with utterance rebalancing; pseudo-labels: "
                  "final pool size and its accuracy against the hidden labels (mean over "
                  "seeds).", "",
                  "| mode | k | w/o: target | w/o: source | w: target | w: source | "
                  "pseudo w/o (acc) | pseudo w (acc) |",
                  "|---|---|---|---|---|---|---|---|"]
        for mode in ("hard", "soft"):
            for k in sorted(part.loc[part["mode"] == mode, "k"].unique()):
                cells, pseudo = [], []
                for rebalance in (False, True):
                    sel = part[(part["mode"] == mode) & (part["k"] == k)
                               & (part["rebalance"] == rebalance)]
                    cells += [_cell(sel, "target_ua"), _cell(sel, "source_ua")]
                    acc = sel["pseudo_acc"].mean() if len(sel) else float("nan")
                    pseudo.append("-" if not len(sel) else
                                  f"{sel['n_pseudo'].mean():.0f}" + (
                                      f" ({acc * 100:.0f}%)" if np.isfinite(acc) else ""))
                lines.append(f"| {mode} | {k} | " + " | ".join(cells + pseudo) + " |")
        lines.append("")
    lines.append(f"Per-fit figures: `{_shown(args.csv)}`; mean fit time "
                 f"{df['fit_s'].mean():.1f} s." if len(df) else "No fits ran.")
    return "\n".join(lines)


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO.resolve()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpora", nargs="?", type=Path, default=DEFAULT_CORPORA,
                        help="folder holding ravdess/, emodb/, emovo/ (default ../shared/corpora)")
    parser.add_argument("--pairs", nargs="+", default=["ravdess:emodb", "ravdess:emovo"],
                        help="source:target corpus pairs")
    parser.add_argument("--ks", nargs="+", type=int, default=[0, 25, 100])
    parser.add_argument("--modes", nargs="+", default=["hard", "soft"], choices=["hard", "soft"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=100, help="E (paper: 100)")
    parser.add_argument("--every", type=int, default=30, help="W (paper: 30)")
    parser.add_argument("--normalise", default="per_corpus",
                        choices=["global", "per_corpus", "per_speaker", "none"])
    parser.add_argument("--extractor", default="whisper:pooling=mean")
    parser.add_argument("--store", type=Path, default=REPO / "cache" / "features",
                        help="feature store (cached features are reused)")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for audio decoding and feature extraction")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch threads for training the heads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, default=None,
                        help="N random utterances per corpus (smoke test)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--csv", type=Path, default=OUT_CSV)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import pandas as pd
    import torch

    from emobridge.features import FeatureStore
    from emobridge.fileio import atomic_path

    torch.set_num_threads(args.torch_threads)
    start = time.perf_counter()
    store = FeatureStore(args.store)
    pairs = [tuple(p.split(":")) for p in args.pairs]
    if any(len(p) != 2 for p in pairs):
        raise SystemExit(f"--pairs takes source:target, got {args.pairs}")
    corpora = {name: load_corpus(name, args.corpora, store, args.extractor, args.limit,
                                 args.threads)
               for name in dict.fromkeys(n for p in pairs for n in p)}
    rows: list[dict] = []
    for source_name, target_name in pairs:
        for seed in args.seeds:
            rows += run_pair(source_name, target_name, corpora, seed, args)
    results = pd.DataFrame(rows)
    seconds = time.perf_counter() - start
    text = render(results, args, seconds)
    print(text)
    if not args.no_write:
        with atomic_path(args.csv) as tmp:
            results.to_csv(tmp, index=False)
        write_section("semi", text, args.results)
        print(f"wrote {args.results} and {args.csv}")


if __name__ == "__main__":
    main()
