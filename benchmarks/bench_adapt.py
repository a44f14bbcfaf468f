"""Adaptation to a user's folder (``emobridge predict --adapt``): the "adapt" section.

Each corpus of ``../shared/corpora`` in turn plays the user's folder, given as a bare list
of files (no speakers, no labels). A default-model bundle is built without it (the same
recipe and source memory as the shipped default model, on the other four corpora:
leave-one-corpus-out), then the folder is labelled by

(a) ``predict`` with the bundle's statistics, (b) ``predict`` with the folder's own
statistics, (c) ``predict --adapt --speakers none``, (d) ``predict --adapt`` with estimated
speakers, (e) ``predict --adapt --speakers COLUMN`` with the true speakers.

Also: the same on a *confounded* variant of each folder (every speaker keeps mostly one
emotion: 80 % of its utterances from one class, rotating; built with the labels, which the
method never sees), the shipped default model on ASED and emotiontts, the speaker
clustering's purity / NMI, adaptation time, and the wall time of ``predict --adapt`` through
the CLI per hour of audio. The library calls are those of the CLI (``Recognizer``); features
come from the feature store.

    python benchmarks/bench_adapt.py [--corpora-root DIR] [--no-cli]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import variants
from _common import DEFAULT_CORPORA, REPO, extract_features, load_manifest, write_section

CORPORA = ["emodb", "ravdess", "emovo", "ased", "emotiontts"]
RECIPE = "whisper:backend=torch,layer=[2,3,4],pooling=mean,level=rms"
SPEAKER = "ge2e"
CLASSES = ("anger", "happiness", "neutral", "sadness")
OUT = REPO / "benchmarks" / "out" / "adapt"


def ua(truth: np.ndarray, predicted: np.ndarray) -> float:
    from emobridge.metrics import unweighted_average_recall

    return 100 * unweighted_average_recall(truth, predicted, len(CLASSES))


def build_bundle(names: list[str], manifests: dict, feats: dict, spk: dict, folder: Path
                 ) -> Path:
    """The recipe (default parameters) on ``names`` with a source memory holding GE2E."""
    from emobridge.inference.bundle import save_bundle, training_summary
    from emobridge.inference.memory import SourceMemory
    from emobridge.methods import EmotionData, build_method

    data = EmotionData.concat([EmotionData.from_manifest(manifests[n], feats[n], CLASSES)
                               for n in names])
    embeds = np.concatenate([np.stack(spk[n]) for n in names])
    method = build_method("recommended", seed=0).fit(data)
    return save_bundle(method, folder, extractor=RECIPE, label_set="4class",
                       training=training_summary(data),
                       memory=SourceMemory.from_data(data, embeds, SPEAKER))


def confounded(manifest: pd.DataFrame) -> pd.DataFrame:
    """The confounded variant of a folder (:func:`variants.confounded`: each speaker keeps
    80 % of its utterances in one class, rotating; every class stays)."""
    rows = variants.confounded(manifest["emotion"].map(CLASSES.index).to_numpy(),
                               manifest["speaker"].to_numpy(str), len(CLASSES))
    return manifest.iloc[rows]


def label(rec: Any, manifest: pd.DataFrame, feats: list, spk: list, mode: str,
          overrides: dict | None = None) -> dict:
    """UA of one condition (a-e) on ``manifest``, with timing and clustering scores
    (``overrides``: the refit's parameters, default the adaptation's own)."""
    from emobridge.inference.adapt import adapt_method
    from emobridge.inference.speakers import cluster_scores

    truth = manifest["emotion"].map(CLASSES.index).to_numpy()
    if mode in ("bundle", "domain"):
        return {"ua": ua(truth, rec.proba(feats, stats=mode).argmax(axis=1))}
    speakers = {"none": "none", "auto": "auto",
                "true": list(manifest["speaker"].astype(str))}[mode]
    result = adapt_method(rec.bundle, feats, list(manifest["path"]),
                          list(manifest["duration_s"]), speakers=speakers,
                          speaker_embeddings=np.stack(spk), seed=0, overrides=overrides)
    pred = result.method.predict_proba(result.target).argmax(axis=1)
    out = {"ua": ua(truth, pred), "seconds": result.info["seconds"],
           "distance": result.info["distance"],
           "normalisation": result.info["normalisation"],
           "k": result.info["speakers"].get("count"), "warnings": result.warnings}
    if mode == "auto":
        est = fallback_free(np.asarray(result.target.speakers, dtype=str))
        out["clusters"] = cluster_scores(est, manifest["speaker"].to_numpy(str),
                                         manifest["emotion"].to_numpy(str))
    return out


def fallback_free(speakers: np.ndarray) -> np.ndarray:
    """Estimated speaker ids, with the per-recording ids of a fallback as one group."""
    return np.where(np.char.startswith(speakers.astype(str), "utt-"), "all",
                    speakers.astype(str))


PLAIN = {"speaker_statistics": "plain"}
MODES = [("a", "bundle"), ("b", "domain"), ("c", "none"), ("d", "auto"), ("e", "true")]


def run_corpus(held: str, manifests: dict, feats: dict, spk: dict) -> dict:
    """Every condition on ``held`` and on its confounded variant, with a bundle built
    without it."""
    from emobridge.inference.recognizer import Recognizer

    folder = build_bundle([n for n in CORPORA if n != held], manifests, feats, spk,
                          OUT / f"without-{held}")
    rec = Recognizer.load(folder)
    m = manifests[held]
    row: dict[str, Any] = {"clean": {}, "confounded": {}}
    for letter, mode in MODES:
        row["clean"][letter] = label(rec, m, feats[held], spk[held], mode)
    # the one choice made for adaptation (ADAPT_OVERRIDES), measured against the other
    row["clean"]["d_plain"] = label(rec, m, feats[held], spk[held], "auto", PLAIN)
    variant = confounded(m)
    index = [m.index.get_loc(i) for i in variant.index]
    vf, vs = [feats[held][i] for i in index], [spk[held][i] for i in index]
    for letter, mode in MODES[2:]:
        row["confounded"][letter] = label(rec, variant.reset_index(drop=True), vf, vs, mode)
    row["n"], row["n_confounded"] = len(m), len(variant)
    print(held, {k: {x: round(v["ua"], 1) for x, v in d.items()} for k, d in row.items()
                 if isinstance(d, dict)}, flush=True)
    return row


def shipped_default(manifests: dict, feats: dict, spk: dict) -> dict:
    """The shipped default model (EMO-DB, RAVDESS, EMOVO) on bare ASED and emotiontts."""
    from emobridge.inference.recognizer import Recognizer

    rec = Recognizer.default()
    out = {}
    for name in ("ased", "emotiontts"):
        m = manifests[name]
        out[name] = {letter: label(rec, m, feats[name], spk[name], mode)["ua"]
                     for letter, mode in MODES if letter in "abcd"}
        print("default model", name, out[name], flush=True)
    return out


def far_guard() -> dict:
    """The distance guard on the shipped default model: the distance of 20 two-second clips
    of silence (faint noise), music (chords of pure tones) and white noise, against its
    reference (the furthest training corpus from the others)."""
    from emobridge.inference.adapt import domain_distance
    from emobridge.inference.recognizer import Recognizer

    rec = Recognizer.default()
    memory = rec.bundle.load_memory()
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    makers = {
        "silence": lambda: rng.normal(0, 1e-4, t.size),
        "music": lambda: sum(0.2 * np.sin(2 * np.pi * f * t)
                             for f in rng.choice([220, 277, 330, 440, 554, 659], 3)),
        "white noise": lambda: rng.normal(0, 0.1, t.size)}
    out = {}
    for name, make in makers.items():
        feats = rec.features([make().astype(np.float32) for _ in range(20)])
        out[name] = domain_distance(memory, np.stack(feats))
    return out


def cli_wall(manifests: dict, names: list[str]) -> dict:
    """Wall time of ``emobridge predict --adapt`` (no store: decoding and extraction
    included) over the files of ``names``, per hour of audio."""
    files = pd.concat([manifests[n] for n in names])
    hours = float(files["duration_s"].sum()) / 3600
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "files.txt"
        listing.write_text("\n".join(files["path"]) + "\n")
        t0 = time.perf_counter()
        done = subprocess.run([str(REPO / ".venv" / "bin" / "emobridge"), "predict", "--adapt",
                               str(listing), "-o", str(Path(tmp) / "out.csv"),
                               "--no-progress"], capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"predict --adapt failed: {done.stderr.strip()[-500:]}")
    return {"files": len(files), "hours": hours, "wall_s": wall,
            "min_per_hour": wall / 60 / hours}


def table(rows: dict, part: str, letters: str) -> str:
    head = {"a": "(a) bundle stats", "b": "(b) folder stats", "c": "(c) adapt, no speakers",
            "d": "(d) adapt, estimated speakers", "e": "(e) adapt, true speakers"}
    lines = ["| folder | files | " + " | ".join(head[x] for x in letters) + " |",
             "|---|---|" + "---|" * len(letters)]
    for name, row in rows.items():
        n = row["n" if part == "clean" else "n_confounded"]
        lines.append(f"| {name} | {n} | " + " | ".join(f"{row[part][x]['ua']:.1f}"
                                                        for x in letters) + " |")
    means = [np.mean([r[part][x]["ua"] for r in rows.values()]) for x in letters]
    lines.append("| **mean** | | " + " | ".join(f"**{m:.1f}**" for m in means) + " |")
    return "\n".join(lines)


def clusters_table(rows: dict, manifests: dict) -> str:
    lines = ["| folder | true speakers | estimated k | purity | NMI speaker | NMI emotion | "
             "normalisation chosen | adapt s |", "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        d = row["clean"]["d"]
        c = d["clusters"]
        lines.append(f"| {name} | {manifests[name]['speaker'].nunique()} | {c['k']} | "
                     f"{c['purity']:.2f} | {c['nmi_speaker']:.2f} | {c['nmi_emotion']:.2f} | "
                     f"{d['normalisation']} | {d['seconds']:.1f} |")
    return "\n".join(lines)


def nested_table(rows: dict) -> str:
    """Plain against class-balanced speaker statistics in (d), and the leave-one-corpus-out
    choice: decided on the mean of four folders, scored on the fifth."""
    lines = ["| scored folder | (d) plain | (d) balanced | chosen on the other four | "
             "nested (d) |", "|---|---|---|---|---|"]
    nested = []
    for name, row in rows.items():
        others = [r for n, r in rows.items() if n != name]
        plain = np.mean([r["clean"]["d_plain"]["ua"] for r in others])
        balanced = np.mean([r["clean"]["d"]["ua"] for r in others])
        pick = "d" if balanced >= plain else "d_plain"
        nested.append(row["clean"][pick]["ua"])
        lines.append(f"| {name} | {row['clean']['d_plain']['ua']:.1f} | "
                     f"{row['clean']['d']['ua']:.1f} | "
                     f"{'balanced' if pick == 'd' else 'plain'} | {nested[-1]:.1f} |")
    lines.append(f"| **mean** | {np.mean([r['clean']['d_plain']['ua'] for r in rows.values()]):.1f}"
                 f" | {np.mean([r['clean']['d']['ua'] for r in rows.values()]):.1f} | | "
                 f"**{np.mean(nested):.1f}** |")
    return "\n".join(lines)


def shipped_table(default: dict) -> str:
    lines = ["| folder | (a) | (b) | (c) | (d) |", "|---|---|---|---|---|"]
    lines += [f"| {name} | " + " | ".join(f"{v[x]:.1f}" for x in "abcd") + " |"
              for name, v in default.items()]
    return "\n".join(lines)


def guard_table(rows: dict, far: dict) -> str:
    lines = ["| folder | distance | reference | ratio |", "|---|---|---|---|"]
    for name, row in rows.items():
        d = row["clean"]["d"]["distance"]
        lines.append(f"| {name} (speech) | {d['value']:.2f} | {d['reference']:.2f} | "
                     f"{d['value'] / d['reference']:.2f} |")
    for name, (value, reference) in far.items():
        lines.append(f"| {name} (default model) | {value:.2f} | {reference:.2f} | "
                     f"{value / reference:.2f} |")
    return "\n".join(lines)


def goals(rows: dict, default: dict, wall: dict | None) -> str:
    mean = {x: np.mean([r["clean"][x]["ua"] for r in rows.values()]) for x in "abcde"}
    worst = min(r["clean"]["d"]["ua"] - r["clean"]["e"]["ua"] for r in rows.values())
    below_b = [n for n, r in rows.items() if r["clean"]["d"]["ua"] < r["clean"]["b"]["ua"]]
    conf = [n for n, r in rows.items()
            if r["confounded"]["d"]["ua"] < r["confounded"]["c"]["ua"]]
    slowest = max(r["clean"]["d"]["seconds"] for r in rows.values())
    out = ["| goal | measured | met |", "|---|---|---|",
           f"| (d) within 2 points of (e) on the mean | {mean['d'] - mean['e']:+.1f} | "
           f"{'yes' if mean['d'] >= mean['e'] - 2 else 'no'} |",
           f"| no corpus more than 5 below (e) | worst {worst:+.1f} | "
           f"{'yes' if worst >= -5 else 'no'} |",
           f"| (d) >= (a) + 10 on the mean | {mean['d'] - mean['a']:+.1f} | "
           f"{'yes' if mean['d'] >= mean['a'] + 10 else 'no'} |",
           f"| no corpus where (d) < (b) | {', '.join(below_b) or 'none'} | "
           f"{'yes' if not below_b else 'no'} |",
           f"| shipped default model, bare ASED (d) >= 85 | {default['ased']['d']:.1f} | "
           f"{'yes' if default['ased']['d'] >= 85 else 'no'} |",
           f"| shipped default model, bare emotiontts (d) >= 70 | "
           f"{default['emotiontts']['d']:.1f} | "
           f"{'yes' if default['emotiontts']['d'] >= 70 else 'no'} |",
           f"| confounded variant: (d) never below (c) | {', '.join(conf) or 'none below'} | "
           f"{'yes' if not conf else 'no'} |",
           f"| adapting after extraction < 60 s (largest folder, "
           f"{max(r['n'] for r in rows.values())} files) | {slowest:.1f} s | "
           f"{'yes' if slowest < 60 else 'no'} |"]
    if wall:
        out.append(f"| `predict --adapt` < 3 min per hour of audio | "
                   f"{wall['min_per_hour']:.2f} min/h ({wall['files']} files, "
                   f"{wall['hours']:.2f} h, {wall['wall_s']:.0f} s) | "
                   f"{'yes' if wall['min_per_hour'] < 3 else 'no'} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora-root", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument("--store", type=Path, default=REPO / "cache" / "features")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI wall-time run")
    parser.add_argument("--cli-corpora", default="ased,emotiontts",
                        help="corpora whose files the CLI wall-time run labels")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    manifests = {n: load_manifest(args.corpora_root, n) for n in CORPORA}
    feats = extract_features(args.store, manifests, RECIPE)
    spk = extract_features(args.store, manifests, SPEAKER)
    rows = {n: run_corpus(n, manifests, feats, spk) for n in CORPORA}
    default = shipped_default(manifests, feats, spk)
    far = far_guard()
    wall = None if args.no_cli else cli_wall(manifests, args.cli_corpora.split(","))
    body = f"""## Adaptation to a user's folder (`predict --adapt`)

`python benchmarks/bench_adapt.py` ({(time.perf_counter() - t0) / 60:.0f} min on 2 CPU cores,
features cached). Each corpus plays the user's folder as a bare list of files; the bundle is
the default model's recipe and source memory (with GE2E speaker embeddings) on the other four
corpora. UA %, 4 classes, every file of the folder labelled (transductive).

{table(rows, "clean", "abcde")}

Speaker estimation in (d) (GE2E, emotion-blind projection learned on the source memory):

{clusters_table(rows, manifests)}

Class-balanced speaker statistics (the one parameter adaptation sets,
`ADAPT_OVERRIDES`), chosen leave-one-corpus-out on (d):

{nested_table(rows)}

Confounded variant (every speaker keeps 80 % of its utterances in one class, rotating; built
with the labels, never seen by the method):

{table(rows, "confounded", "cde")}

Shipped default model (EMO-DB, RAVDESS, EMOVO), bare file lists, UA %:

{shipped_table(default)}

The guard "far from the training data" (a warning when the distance passes 1.5 x the
reference): real speech folders against non-speech folders:

{guard_table(rows, far)}

What did not close the gap between (d) and (e) (one-off runs on the same bundles): finer
speaker clusters (the clustering's `coarse_tolerance` 1.0 instead of 0.6: mean (d) 77.1; the
"speakers" section finds the coarse split best in every fold) and hard instead of posterior
class weights for the balanced statistics (77.2), Whisper features instead of GE2E as speaker
embeddings (77.2: no cluster structure found in four folders), and a second pass that
re-estimates the balanced statistics with the adapted model's posteriors (76.9; (e) 84.4,
confounded (d) 75.0). On the confounded variant the estimated
groups (mostly the speakers' sexes) carry skewed emotion mixes: class-balanced statistics
lift (d) from 69.6 (plain statistics) to 74.1, not to (c).

Goals (issue "Adapt to the user's own recordings"):

{goals(rows, default, wall)}
"""
    write_section("adapt", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
