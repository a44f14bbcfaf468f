"""Build the default model shipped in ``src/emobridge/inference/default/``.

A small head over offline Whisper-base features, trained on EMO-DB, RAVDESS and EMOVO
together (German, English, Italian; 4 classes: anger, happiness, neutral, sadness). The
script first measures the same recipe leave-one-corpus-out (train on two corpora, test on
the third, which the model never saw: how it does on an unseen language), then trains on all
three and writes the bundle with its model card (training data and licences, intended use,
limits, the measured UA). Same arguments, same seed -> same model and the same figures.

    python benchmarks/build_default_model.py --method recommended \\
        --features 'whisper:backend=torch,layer=3,pooling=mean' --corpora-root ../shared/corpora

``--method`` / ``--features`` / ``-p KEY=VALUE`` choose the recipe (any registered method
and extractor spec). ``--limit N`` keeps N utterances per corpus (a smoke run, not for
shipping). The bundle keeps a source memory (the training vectors in float16 and GE2E speaker
embeddings, ``--speaker-features``) so that ``emobridge adapt`` / ``predict --adapt`` can adapt
it to a user's recordings; the whole folder must stay under ``--max-mb`` (10 MB).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import DEFAULT_CORPORA, REPO, extract_features, load_manifest

CORPORA = {"emodb": "German", "ravdess": "English", "emovo": "Italian"}
DEFAULT_OUT = REPO / "src" / "emobridge" / "inference" / "default"
DEFAULT_FEATURES = "whisper:backend=torch,layer=[2,3,4],pooling=mean,level=rms"  # the recipe's
SPEAKER_FEATURES = "ge2e"  # speaker embeddings in the source memory (speaker estimation)


def licences(corpora_root: Path) -> dict[str, dict[str, str]]:
    """Each corpus's full name and licence / terms, from the corpora folder's README table."""
    found: dict[str, dict[str, str]] = {}
    readme = corpora_root / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.exists() else ""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 7:
            continue
        name = re.split(r"[/{]", cells[0])[0]
        if name in CORPORA:
            found[name] = {"corpus": cells[1], "language": cells[2], "files": cells[3],
                           "licence": cells[6]}
    for name in CORPORA:
        found.setdefault(name, {"corpus": name, "language": CORPORA[name],
                                "licence": "see the corpus's own terms"})
    return found


def to_data(manifest: Any, feats: list[np.ndarray], classes: tuple[str, ...]) -> Any:
    from emobridge.methods import EmotionData

    return EmotionData.from_manifest(manifest.reset_index(drop=True), feats, classes)


def build(args: argparse.Namespace, params: dict[str, Any]) -> Any:
    from emobridge.methods import build_method

    return build_method(args.method, **{"seed": args.seed, **params})


def leave_one_corpus_out(args: argparse.Namespace, params: dict[str, Any],
                         manifests: dict[str, Any], feats: dict[str, list[np.ndarray]],
                         classes: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """UA / WA on each corpus of a model trained on the other two (no audio of the held-out
    corpus seen in training)."""
    from emobridge.methods import EmotionData
    from emobridge.metrics import unweighted_average_recall, weighted_accuracy
    from emobridge.protocols import check_speaker_independence

    scores: dict[str, dict[str, float]] = {}
    for held in manifests:
        train_names = [n for n in manifests if n != held]
        check_speaker_independence({"train": _concat([manifests[n] for n in train_names]),
                                    "test": manifests[held]})
        source = EmotionData.concat([to_data(manifests[n], feats[n], classes)
                                     for n in train_names])
        test = to_data(manifests[held], feats[held], classes)
        t0 = time.perf_counter()
        method = build(args, params).fit(source)
        pred = method.predict_proba(test).argmax(axis=1)
        scores[held] = {"ua": unweighted_average_recall(test.labels, pred, len(classes)),
                        "wa": weighted_accuracy(test.labels, pred, len(classes)),
                        "n": len(test), "fit_s": round(time.perf_counter() - t0, 1)}
        print(f"  held out {held}: UA {100 * scores[held]['ua']:.1f} %  WA "
              f"{100 * scores[held]['wa']:.1f} %  ({len(test)} utt, "
              f"{scores[held]['fit_s']} s)", flush=True)
    return scores


def source_memory(args: argparse.Namespace, manifests: dict[str, Any], data: Any) -> Any:
    """The training vectors (and speaker embeddings) that let the bundle adapt."""
    from emobridge.inference.memory import SourceMemory

    spec = args.speaker_features or None
    embeds = None
    if spec is not None:
        found = extract_features(args.store, manifests, spec)
        embeds = np.concatenate([np.stack(found[n]) for n in CORPORA])
    return SourceMemory.from_data(data, embeds, spec)


def _concat(frames: list[Any]) -> Any:
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


def card_markdown(card: dict[str, Any], loco: dict[str, dict[str, float]],
                  data: dict[str, dict[str, str]]) -> str:
    rows = "\n".join(f"| {n} ({data[n]['language']}) | {100 * s['ua']:.1f} | "
                     f"{100 * s['wa']:.1f} | {s['n']} |" for n, s in loco.items())
    corpora = "\n".join(f"- {data[n]['corpus']} ({data[n]['language']}): {data[n]['licence']}"
                        for n in CORPORA)
    return f"""# emobridge default model

{card['summary']}

## Training data
{corpora}

The weights are derived from these corpora: respect their terms (non-commercial for
RAVDESS, research use for EMO-DB and EMOVO).

## Intended use
{card['intended_use']}

## Limits
{card['limits']}

## Accuracy on an unseen corpus (leave-one-corpus-out, same recipe)
| held-out corpus | UA % | WA % | utterances |
|---|---|---|---|
{rows}

Chance UA is 25 %. Reproduce: `{card['reproduce']}`

## Adapting to your recordings
The bundle keeps a source memory: the training vectors (float16), labels, speaker and corpus
ids and GE2E speaker embeddings, no audio. `emobridge predict FOLDER --adapt` and `emobridge
adapt FOLDER -o MODEL` use it to adapt the model to a folder of your recordings without
labels; on languages it never saw this is where most of the accuracy lies
(`benchmarks/RESULTS.md`, "adapt").
"""


def make_card(args: argparse.Namespace, params: dict[str, Any],
              loco: dict[str, dict[str, float]], data: dict[str, dict[str, str]]
              ) -> dict[str, Any]:
    mean_ua = float(np.mean([s["ua"] for s in loco.values()])) if loco else None
    command = " ".join(["python benchmarks/build_default_model.py", f"--method {args.method}",
                        f"--features '{args.features}'", f"--seed {args.seed}",
                        *[f"-p {p}" for p in args.param]])
    return {
        "name": "emobridge default model",
        "summary": (f"{args.method} head over {args.features} features, 4 classes (anger, "
                    "happiness, neutral, sadness), trained on acted speech in German, "
                    "English and Italian."),
        "intended_use": ("Trying emobridge and labelling research recordings with a coarse "
                         "4-class emotion estimate; a baseline to compare your own trained "
                         "bundles against."),
        "limits": ("Trained on acted, studio-quality read speech by 40 adult speakers; "
                   "expect lower accuracy on spontaneous speech, other languages, children, "
                   "noisy or telephone audio. Four classes only: other emotions are forced "
                   "into one of them. Not for decisions about people (hiring, health, "
                   "security, surveillance)."),
        "training_data": data,
        "leave_one_corpus_out": loco,
        "leave_one_corpus_out_mean_ua": mean_ua,
        "recipe": {"method": args.method, "params": params, "features": args.features,
                   "seed": args.seed, "limit": args.limit},
        "reproduce": command,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="recommended", help="registered method name")
    parser.add_argument("--features", default=DEFAULT_FEATURES, help="extractor spec")
    parser.add_argument("-p", "--param", action="append", default=[],
                        help="method parameter KEY=VALUE (JSON values); repeatable")
    parser.add_argument("--corpora-root", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument("--store", type=Path, default=REPO / "cache" / "features")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None,
                        help="utterances per corpus (smoke runs only)")
    parser.add_argument("--skip-loco", action="store_true",
                        help="do not measure leave-one-corpus-out (the card says so)")
    parser.add_argument("--speaker-features", default=SPEAKER_FEATURES,
                        help="extractor spec of the memory's speaker embeddings ('' for none)")
    parser.add_argument("--max-mb", type=float, default=10.0)
    args = parser.parse_args(argv)

    from emobridge.errors import EmobridgeError
    from emobridge.inference.bundle import save_bundle, training_summary
    from emobridge.methods import EmotionData, available_methods
    from emobridge.parsing import parse_pairs
    from emobridge.runtime import seed_everything

    if args.method not in available_methods():
        print(f"unknown method {args.method!r}; known: {sorted(available_methods())}",
              file=sys.stderr)
        return 2
    params = parse_pairs(args.param, "-p")
    seed_everything(args.seed)
    t_start = time.perf_counter()
    manifests = {n: load_manifest(args.corpora_root, n, args.limit) for n in CORPORA}
    feats = extract_features(args.store, manifests, args.features)
    t_feat = time.perf_counter() - t_start
    classes = ("anger", "happiness", "neutral", "sadness")
    loco = {} if args.skip_loco else leave_one_corpus_out(args, params, manifests, feats,
                                                          classes)
    t0 = time.perf_counter()
    data = EmotionData.concat([to_data(manifests[n], feats[n], classes) for n in CORPORA])
    model = build(args, params).fit(data)
    memory = source_memory(args, manifests, data)
    t_fit = time.perf_counter() - t0
    info = licences(args.corpora_root)
    card = make_card(args, params, loco, info)
    summary = training_summary(data, metrics={"leave_one_corpus_out": loco})
    summary["corpora"] = list(CORPORA)
    try:
        out = save_bundle(model, args.out, extractor=args.features, training=summary,
                          card=card, card_markdown=card_markdown(card, loco, info),
                          label_set="4class", memory=memory)
    except EmobridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    size_mb = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    print(f"bundle -> {out} ({size_mb:.2f} MB); features {t_feat:.0f} s, final fit "
          f"{t_fit:.0f} s, total {time.perf_counter() - t_start:.0f} s")
    if size_mb > args.max_mb:
        print(f"error: the bundle is {size_mb:.2f} MB, over --max-mb {args.max_mb}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
