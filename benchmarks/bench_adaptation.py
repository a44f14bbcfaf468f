"""Unsupervised cross-lingual adaptation: RAVDESS (en) -> EMO-DB (de) and -> EMOVO (it), 4 classes.

Methods: ``source_only``, ``dann``, ``nnpm`` and its ablations ``snsa_f``, ``wo_sl``, ``wo_hl``,
plus the control ``no_target_loss`` (NNPM's adaptation phase with ``target_weight=0``) (the NNPM
variants are scored with both the classifier head and the memory vote), on SNSA
over log-mel and on an attention head over frozen Whisper-base frames, several seeds each.
Writes UA / WA (mean +- std over seeds) to the ``adaptation`` section of
``benchmarks/RESULTS.md`` (between ``<!-- adaptation:start -->`` and
``<!-- adaptation:end -->``, atomically) and every run to ``benchmarks/out/adaptation.json``.

Protocol (unsupervised, transductive): the whole source corpus -> the whole target corpus.
Source speakers are split 80 / 20 (by seed, gender-stratified) into training and validation;
source validation early-stops the supervised (pre-)training and is the only model selection.
Target audio is given unlabelled to the adaptation and is also the test set; target labels
are read only for scoring. No hyper-parameter was tuned on target labels: NNPM uses the paper's
values (gamma 0.9, lambda 0.01, beta 0 -> 0.4, Adam 1e-4, batch 32) except the number of
epochs, cut to fit the CPU budget. ``source_only`` is the pre-training shared by ``snsa_f``,
``nnpm``, ``wo_sl``, ``wo_hl`` and ``no_target_loss`` of the same seed
(``NNPM(pretrained=...)``), so SNSA-F with the classifier is exactly ``source_only``.
Features are standardised per corpus (z-scoring with each corpus's own statistics, target
statistics from the unlabelled target audio).

Log-mel: the NNPM preset (16 kHz, Hann 400, FFT 512, hop 160, 128 mel bands) without the
padding to 7.5 s (``fixed_duration_s=null``): padded batches with masks replace it, which halves
the CPU time; training crops utterances to ``--crop-frames`` random frames. Leading and
trailing silence is trimmed (``trim_db=35``) and every utterance scaled to the same RMS
(``level=rms``): without that the SNSA learns RAVDESS's loudness differences, which EMO-DB's
peak-normalised files invert (UA 16 on EMO-DB, below chance; see ``corpus_levels.py``).

For each NNPM variant the run also records how good the pseudo multilabels are (coverage and
precision against the target labels, for the report only).

Run (39 min on 2 CPU cores with the feature cache filled; Whisper extraction adds about
5 min to an empty cache)::

    .venv/bin/python benchmarks/bench_adaptation.py ../shared/corpora

Smoke test on a tiny subset (writes nothing to RESULTS.md unless ``--write``)::

    .venv/bin/python benchmarks/bench_adaptation.py ../shared/corpora --limit 60 --seeds 0 \\
        --pretrain-epochs 1 --adapt-epochs 1 --dann-epochs 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import extract_features, load_manifest, write_section

HERE = Path(__file__).resolve().parent

FEATURES = {
    "logmel": "logmel:preset=nnpm,fixed_duration_s=null,trim_db=35,level=rms",
    "whisper": "whisper:model=base,backend=ct2,pooling=none",
}
FEATURE_TITLES = {"logmel": "SNSA over log-mel", "whisper": "attention head over Whisper-base"}
TARGETS = {"emodb": "EMO-DB", "emovo": "EMOVO"}
#: NNPM's ablations plus ``no_target_loss``: the adaptation phase with ``target_weight=0``
#: (only the continued source training and the frozen convolutions), which separates the
#: effect of the pseudo-multilabel loss from that of training the source model longer.
NNPM_VARIANTS = ("snsa_f", "nnpm", "wo_sl", "wo_hl", "no_target_loss")
METHODS = ("source_only", "dann", *NNPM_VARIANTS)
PREDICTIONS = ("classifier", "memory_vote")
#: Bars from the task description (RAVDESS -> EMO-DB, 4 classes, UA %).
BARS_EMODB = ((43.6, "Whisper-base mean + LR"), (46.0, "same, per-corpus z"),
              (56.0, "eGeMAPS + SVM, per-speaker"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpora", type=Path, help="folder holding ravdess/, emodb/, emovo/")
    p.add_argument("--store", type=Path, default=HERE.parent / "cache" / "features",
                   help="feature store (cache) folder")
    p.add_argument("--features", nargs="+", default=list(FEATURES), choices=list(FEATURES))
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--limit", type=int, default=None,
                   help="keep this many utterances per corpus (class-stratified; smoke tests)")
    p.add_argument("--pretrain-epochs", type=int, default=30,
                   help="source_only / pre-training epochs (early-stopped on source speakers)")
    p.add_argument("--patience", type=int, default=5,
                   help="early-stopping patience (source validation UA) of source_only / DANN")
    p.add_argument("--adapt-epochs", type=int, default=15,
                   help="NNPM adaptation epochs (over the target; the paper uses 50)")
    p.add_argument("--dann-epochs", type=int, default=12)
    p.add_argument("--crop-frames", type=int, default=200,
                   help="random training crop of log-mel utterances (frames of 10 ms)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--json", type=Path, default=HERE / "out" / "adaptation.json")
    p.add_argument("--write", action="store_true",
                   help="with --limit: still write RESULTS.md (it is written by default "
                        "only for full runs)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data

# ----------------------------------------------------------------------------- runs

def common_params(kind: str, seed: int, args: argparse.Namespace) -> dict:
    params = {"normalise": "per_corpus", "seed": seed, "device": "cpu", "batch_size": 32,
              "patience": args.patience}
    if kind == "logmel":
        params.update(backbone="snsa", crop_frames=args.crop_frames)
    else:
        params.update(backbone="attention")
    return params


def score(method, data) -> dict:
    from emobridge.metrics import evaluate

    proba = method.predict_proba(data)
    res = evaluate(data.labels, proba, data.classes, ci=False)
    return {"ua": 100 * res["ua"], "wa": 100 * res["wa"]}


def run_all(args: argparse.Namespace) -> list[dict]:
    import torch

    from emobridge.methods import build_method
    from emobridge.methods.neural import NeuralMethod
    from emobridge.protocols import cross_corpus_split

    torch.set_num_threads(args.threads)
    names = ["ravdess", *args.targets]
    manifests = {n: load_manifest(args.corpora, n, args.limit) for n in names}
    for n, m in manifests.items():
        print(f"{n}: {len(m)} utterances, {m['speaker'].nunique()} speakers, "
              f"{m['emotion'].value_counts().to_dict()}", flush=True)
    classes = ("anger", "happiness", "neutral", "sadness")
    runs: list[dict] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench_adaptation_"))
    try:
        for kind in args.features:
            print(f"features {kind}:", flush=True)
            feats = extract_features(args.store, manifests, FEATURES[kind], args.threads)
            for seed in args.seeds:
                pretrained: dict[tuple, tuple[Path, float]] = {}
                for target in args.targets:
                    split = cross_corpus_split(manifests["ravdess"], manifests[target],
                                               target_ratios=(0, 0, 1), seed=seed,
                                               source_validation_ratio=0.2)
                    src = _data(split.source_train, feats["ravdess"], classes)
                    val = _data(split.source_validation, feats["ravdess"], classes)
                    test = _data(split.target_test, feats[target], classes)
                    unlabelled = test.without_labels()
                    key = tuple(split.source_train["path"])
                    base = common_params(kind, seed, args)
                    for name in args.methods:
                        t0 = time.perf_counter()
                        if name == "dann":
                            m = build_method("dann", epochs=args.dann_epochs, lr=1e-3,
                                             **base).fit(src, unlabelled, validation=val)
                            runs.append(_record(kind, target, seed, name, None, score(m, test),
                                                time.perf_counter() - t0))
                            continue
                        if key not in pretrained:  # source_only = the shared pre-training
                            m = build_method("source_only", epochs=args.pretrain_epochs,
                                             lr=1e-3, **base).fit(src, validation=val)
                            path = m.save(workdir / f"{kind}-seed{seed}-{len(pretrained)}")
                            pretrained[key] = (path, time.perf_counter() - t0)
                        path, pre_s = pretrained[key]
                        if name == "source_only":
                            m = NeuralMethod.load(path, device="cpu")
                            runs.append(_record(kind, target, seed, name, None, score(m, test),
                                                pre_s))
                            continue
                        t0 = time.perf_counter()
                        # No validation: with `pretrained` NNPM would only log it per epoch.
                        variant = {"variant": "nnpm", "target_weight": 0.0} \
                            if name == "no_target_loss" else {"variant": name}
                        m = build_method("nnpm", **variant, pretrained=str(path),
                                         epochs=args.adapt_epochs, **base).fit(src, unlabelled)
                        elapsed = time.perf_counter() - t0
                        stats = {**_adapt_stats(m), **_pseudo_label_quality(m, test)}
                        for prediction in PREDICTIONS:
                            m.set_params(prediction=prediction)
                            runs.append(_record(kind, target, seed, name, prediction,
                                                score(m, test), elapsed, stats))
                    done = [r for r in runs if r["features"] == kind and r["seed"] == seed
                            and r["target"] == target]
                    for r in done:
                        print(f"  {kind} seed {seed} -> {target}: {r['method']:<11} "
                              f"{r['prediction'] or '':<11} UA {r['ua']:5.1f} WA {r['wa']:5.1f}"
                              f" ({r['time_s']:.0f} s)", flush=True)
            del feats
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return runs


def _data(frame, features: list, classes: tuple):
    from emobridge.methods import EmotionData

    # Partitions keep the manifest's RangeIndex, so the index picks the feature rows.
    return EmotionData.from_manifest(frame, [features[i] for i in frame.index], classes)


def _adapt_stats(method) -> dict:
    adapt = [r for r in method.history_ if r.get("phase") == "adapt"]
    if not adapt:
        return {}
    last = adapt[-1]
    return {k: float(last[k]) for k in ("target_pos_rate", "target_n_pos", "l_pos", "l_neg")
            if k in last}


def _pseudo_label_quality(method, test) -> dict:
    """How good the pseudo multilabels are at the end of ``fit`` (target labels used for this
    report only): the share of target utterances with a memory slot at cosine >= gamma
    (``pml_coverage``) and the share of those (utterance, slot) pairs whose slot carries the
    utterance's true emotion (``pml_precision``)."""
    sim = method.memory_similarity(test)
    slot_labels = method.model_.memory.labels.cpu().numpy()
    positive = sim >= method.gamma
    match = slot_labels[None, :] == np.asarray(test.labels)[:, None]
    pairs = int(positive.sum())
    return {"pml_coverage": float(positive.any(axis=1).mean()),
            "pml_precision": float((positive & match).sum() / pairs) if pairs else float("nan")}


def _record(kind, target, seed, method, prediction, scores, time_s, stats=None) -> dict:
    return {"features": kind, "target": target, "seed": seed, "method": method,
            "prediction": prediction, **scores, "time_s": time_s, **(stats or {})}


# ----------------------------------------------------------------------------- report

def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def _bar_note(ua: float) -> str:
    cleared = [f"{bar:.1f}" for bar, _ in BARS_EMODB if ua > bar]
    missed = [f"{bar:.1f}" for bar, _ in BARS_EMODB if ua <= bar]
    parts = []
    if cleared:
        parts.append("clears " + "/".join(cleared))
    if missed:
        parts.append("below " + "/".join(missed))
    return "; ".join(parts)


def render(runs: list[dict], args: argparse.Namespace, total_s: float) -> str:
    seeds = sorted({r["seed"] for r in runs})
    lines = [
        "## Unsupervised cross-lingual adaptation (RAVDESS -> EMO-DB / EMOVO, 4 classes)",
        "",
        f"`benchmarks/bench_adaptation.py`: whole RAVDESS (en) -> whole target corpus, target "
        f"audio unlabelled for adaptation and test (labels only for scoring); source speakers "
        f"80/20 train/validation by seed, validation = early stopping of the supervised "
        f"(pre-)training only; per-corpus z-scoring. UA / WA in %, mean ± std over seeds "
        f"{seeds}. Epochs: pre-training / source_only {args.pretrain_epochs} (patience "
        f"{args.patience}), DANN {args.dann_epochs}, NNPM adaptation {args.adapt_epochs}; "
        f"log-mel training crops {args.crop_frames} frames. NNPM: gamma 0.9, lambda 0.01, "
        f"beta 0 -> 0.4, Adam 1e-4, batch 32, first 2 conv layers frozen (SNSA), "
        f"`no_positive=top_k` (k=1). Rows `nnpm / classifier` use the source classifier on "
        f"the adapted embedding, `/ memory_vote` the similarity-weighted vote of the matched "
        f"memory slots. `no_target_loss` is the NNPM adaptation with `target_weight=0` (source "
        f"cross-entropy only, convolutions frozen, same epochs): NNPM minus it is the effect of "
        f"the pseudo-multilabel loss. Log-mel: `{FEATURES['logmel']}` (silence trimmed and "
        f"level normalised, see the levels section). Bars (RAVDESS -> EMO-DB UA): 43.6 frozen "
        f"Whisper-base mean + logistic "
        f"regression (46.0 with per-corpus z-scoring), 56.0 eGeMAPS + SVM with per-speaker "
        f"scaling.",
        "",
    ]
    if args.limit:
        lines += [f"**Smoke run on {args.limit} utterances per corpus: not a result.**", ""]
    targets = [t for t in TARGETS if any(r["target"] == t for r in runs)]
    header = "| features | method | prediction |"
    sep = "|---|---|---|"
    for t in targets:
        header += f" {TARGETS[t]} UA | {TARGETS[t]} WA |"
        sep += "---|---|"
        if t == "emodb":
            header += " EMO-DB UA vs bars 43.6 / 46.0 / 56.0 |"
            sep += "---|"
    header += " s / run |"
    sep += "---|"
    lines += [header, sep]
    keys = []
    for r in runs:
        k = (r["features"], r["method"], r["prediction"])
        if k not in keys:
            keys.append(k)
    for kind, method, prediction in keys:
        row = f"| {FEATURE_TITLES[kind]} | {method} | {prediction or '-'} |"
        times = []
        for t in targets:
            sel = [r for r in runs if (r["features"], r["method"], r["prediction"], r["target"])
                   == (kind, method, prediction, t)]
            row += f" {_cell([r['ua'] for r in sel])} | {_cell([r['wa'] for r in sel])} |"
            if t == "emodb":
                row += f" {_bar_note(float(np.mean([r['ua'] for r in sel]))) if sel else '-'} |"
            times += [r["time_s"] for r in sel]
        row += f" {np.mean(times):.0f} |" if times else " - |"
        lines.append(row)
    lines += ["", *_pseudo_label_table(runs, targets)]
    best = _best_prediction(runs)
    if best:
        lines += ["", best]
    lines += ["", f"Total wall time {total_s / 60:.1f} min ({args.threads} threads). Command: "
              f"`{args.command}`."]
    return "\n".join(lines) + "\n"


def _pseudo_label_table(runs: list[dict], targets: list[str]) -> list[str]:
    """Coverage and precision of the pseudo multilabels per NNPM variant (mean over seeds)."""
    rows = [r for r in runs if r.get("pml_coverage") is not None
            and r["prediction"] == PREDICTIONS[0]]
    if not rows:
        return []
    out = ["Pseudo multilabels at the end of `fit` (`snsa_f`: of the pre-trained model), mean "
           "over seeds: coverage = share of target utterances with a memory slot at cosine >= "
           "gamma; precision = share of those (utterance, slot) pairs whose slot has the "
           "utterance's true emotion (target labels read for this report only).", "",
           "| features | method | " + " | ".join(f"{TARGETS[t]} coverage % | {TARGETS[t]} "
                                                  f"precision %" for t in targets) + " |",
           "|---|---|" + "---|---|" * len(targets)]
    for kind, method in dict.fromkeys((r["features"], r["method"]) for r in rows):
        row = f"| {FEATURE_TITLES[kind]} | {method} |"
        for t in targets:
            sel = [r for r in rows if (r["features"], r["method"], r["target"]) ==
                   (kind, method, t)]
            cov = [100 * r["pml_coverage"] for r in sel]
            prec = [100 * r["pml_precision"] for r in sel if np.isfinite(r["pml_precision"])]
            row += f" {_cell(cov)} | {_cell(prec)} |"
        out.append(row)
    return out


def _best_prediction(runs: list[dict]) -> str:
    """One line: which NNPM prediction mode scored the higher mean UA, per feature type."""
    out = []
    for kind in dict.fromkeys(r["features"] for r in runs):
        means = {}
        for p in PREDICTIONS:
            sel = [r["ua"] for r in runs if r["features"] == kind and r["prediction"] == p
                   and r["method"] == "nnpm"]
            if sel:
                means[p] = float(np.mean(sel))
        if len(means) == len(PREDICTIONS):
            winner = max(means, key=means.get)
            out.append(f"{FEATURE_TITLES[kind]}: `{winner}` ("
                       + ", ".join(f"{p} {v:.1f}" for p, v in means.items()) + " mean UA of "
                       "nnpm over targets and seeds)")
    return ("NNPM prediction mode: " + "; ".join(out) + ".") if out else ""


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.command = " ".join([".venv/bin/python", "benchmarks/bench_adaptation.py",
                             *(sys.argv[1:] if argv is None else argv)])
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    sys.path.insert(0, str(HERE.parent / "src"))
    t0 = time.perf_counter()
    runs = run_all(args)
    total = time.perf_counter() - t0
    from emobridge.fileio import write_json_atomic

    write_json_atomic(args.json, {"args": vars(args), "runs": runs, "total_s": total})
    body = render(runs, args, total)
    print(body)
    if args.limit is None or args.write:
        write_section("adaptation", body, args.results)
        print(f"wrote the adaptation section of {args.results}")


if __name__ == "__main__":
    main()
