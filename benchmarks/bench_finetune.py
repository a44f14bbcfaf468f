"""Pilot of issue 24's first direction: fine-tune Whisper's middle layers on the labelled
source, then run the shipped recipe on the tuned layers ("finetune" section).

    .venv/bin/python benchmarks/bench_finetune.py [--sources ravdess,emodb] [--write]

For each source corpus: Whisper base's blocks 2, 3 and 4 (the recipe's layers) are copied
and trained on that corpus's labelled utterances (4 classes) from the cached output of
block 1 (`whisper:backend=torch,layer=1,pooling=none,level=rms`), with one linear head per
block on its mean-pooled output (logits averaged, class-weighted cross-entropy). No target
audio or label is seen by the tuning. Then every other corpus is the target of the shipped
recipe (`method: recommended`, transductive, k = 0) twice: on the frozen features
(`whisper:...,layer=[2,3,4],pooling=mean,level=rms`) and on the tuned blocks' mean-pooled
outputs; each also without self-training (`rounds: []`); and the mean of the two recipes'
probabilities (a label-free hedge between them). Settings fixed before any score:
3 epochs, batches of 8, AdamW (blocks 2e-5, heads 1e-3, weight decay 0.01), seed 0. Pairs
of single corpora only: a leave-one-corpus-out source takes about 3x longer to tune.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from pathlib import Path

import numpy as np

from _common import DEFAULT_CORPORA, REPO, extract_features, load_manifest, write_section
from emobridge.fileio import write_text_atomic

NAMES = ("ravdess", "emodb", "emovo", "ased", "emotiontts")
CLASSES = ("anger", "happiness", "neutral", "sadness")
FRAMES = "whisper:backend=torch,layer=1,pooling=none,level=rms"
EPOCHS, BATCH, LR_BLOCKS, LR_HEADS, WEIGHT_DECAY = 3, 8, 2e-5, 1e-3, 0.01


def load(corpora: Path, store: Path) -> tuple[dict, dict]:
    """Per corpus: block-1 frames (one array per utterance) and the frozen recipe data."""
    from emobridge.methods import EmotionData
    from emobridge.methods.recommended import RECIPE_FEATURES

    manifests = {}
    for n in NAMES:
        m = load_manifest(corpora, n)
        manifests[n] = m[m["emotion"].isin(CLASSES)].reset_index(drop=True)
    frames = extract_features(store, manifests, FRAMES)
    pooled = extract_features(store, manifests, RECIPE_FEATURES)
    frozen = {n: EmotionData.from_manifest(manifests[n], pooled[n], CLASSES) for n in NAMES}
    for n in NAMES:  # the rows the frozen data keeps are the frames' rows, in order
        assert len(frozen[n]) == len(frames[n]), n
    return frames, frozen


def pooled_blocks(blocks, xs: list[np.ndarray]) -> list:
    """Run ``blocks`` on a padded batch of block-1 frames; each block's mean over the real
    frames of every row."""
    import torch
    import torch.nn.functional as F

    lengths = torch.tensor([len(x) for x in xs])
    width = int(lengths.max())
    x = torch.stack([F.pad(torch.as_tensor(a), (0, 0, 0, width - len(a))) for a in xs])
    mask = torch.arange(width)[None] < lengths[:, None]
    outs = []
    for block in blocks:
        x = block(x, mask[:, None, None, :])
        outs.append((x * mask[..., None]).sum(1) / lengths[:, None])
    return outs


def finetune(encoder, frames: list[np.ndarray], labels: np.ndarray) -> tuple[object, float]:
    """Blocks 2-4 of ``encoder`` tuned on (``frames``, ``labels``); and the seconds taken."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)
    blocks = copy.deepcopy(encoder.layers[1:4]).float()
    heads = nn.ModuleList(nn.Linear(encoder.config.d_model, len(CLASSES)) for _ in blocks)
    weight = torch.tensor(len(labels) / (len(CLASSES) * np.bincount(labels, minlength=len(
        CLASSES))), dtype=torch.float32)
    opt = torch.optim.AdamW([{"params": blocks.parameters(), "lr": LR_BLOCKS},
                             {"params": heads.parameters(), "lr": LR_HEADS}],
                            weight_decay=WEIGHT_DECAY)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(EPOCHS):
        order = rng.permutation(len(labels))
        for s in range(0, len(order), BATCH):
            rows = order[s: s + BATCH]
            outs = pooled_blocks(blocks, [frames[i] for i in rows])
            logits = sum(h(o) for h, o in zip(heads, outs, strict=True)) / len(heads)
            loss = F.cross_entropy(logits, torch.as_tensor(labels[rows]), weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return blocks.eval(), time.perf_counter() - t0


def tuned_data(blocks, frames: list[np.ndarray], like):
    """``like`` (the frozen data of the same rows) with the tuned blocks' pooled outputs."""
    import torch

    feats: list[np.ndarray] = []
    with torch.no_grad():
        for s in range(0, len(frames), 16):
            feats += list(torch.cat(pooled_blocks(blocks, frames[s: s + 16]), 1).numpy())
    return type(like)([f.astype(np.float32) for f in feats], like.labels, like.speakers,
                      like.languages, like.ids, like.classes)


def score(source, target) -> tuple[dict, np.ndarray]:
    """The shipped recipe and the recipe without self-training: UA % and normalisation;
    and the shipped recipe's probabilities on the target."""
    from emobridge.methods import build_method
    from emobridge.metrics import unweighted_average_recall

    out, proba = {}, None
    for label, params in (("recipe", {}), ("no_st", {"rounds": []})):
        fitted = build_method("recommended", **params).fit(source, target.without_labels())
        p = fitted.predict_proba(target)
        proba = p if proba is None else proba
        out[label] = 100 * unweighted_average_recall(target.labels, p.argmax(axis=1))
        out[label + "_norm"] = fitted.normalisation_
    return out, proba


def measure(sources: list[str], frames: dict, frozen: dict, cache: Path) -> dict:
    from emobridge.features.registry import build_extractor
    from emobridge.metrics import unweighted_average_recall

    done = json.loads(cache.read_text()) if cache.exists() else {}
    encoder = None
    for src in sources:
        if all("ensemble" in done.get(f"{src}>{t}", {}) for t in NAMES if t != src):
            continue
        if encoder is None:
            encoder = build_extractor(FRAMES).load()
        blocks, secs = finetune(encoder, frames[src], frozen[src].labels)
        tuned_src = tuned_data(blocks, frames[src], frozen[src])
        for tgt in (t for t in NAMES if t != src):
            (plain, p_plain), (tuned, p_tuned) = score(frozen[src], frozen[tgt]), score(
                tuned_src, tuned_data(blocks, frames[tgt], frozen[tgt]))
            both = ((p_plain + p_tuned) / 2).argmax(axis=1)
            row = {"tune_s": secs, "frozen": plain, "tuned": tuned, "ensemble": 100 *
                   unweighted_average_recall(frozen[tgt].labels, both)}
            done[f"{src}>{tgt}"] = row
            write_text_atomic(cache, json.dumps(done))
            print(f"{src} -> {tgt}: frozen {row['frozen']['recipe']:.1f}, tuned "
                  f"{row['tuned']['recipe']:.1f} (tuning {secs:.0f} s)", flush=True)
    return done


def report(done: dict) -> str:
    from bench_grid import _ci

    keys = [f"{s}>{t}" for s in NAMES for t in NAMES if s != t and f"{s}>{t}" in done]
    lines = ["| task | recipe, frozen | recipe, tuned | mean of the two recipes | frozen, no "
             "self-training | tuned, no self-training | tuning (s) |", "|---" * 7 + "|"]
    for k in keys:
        r = done[k]
        lines.append(f"| {k.replace('>', ' -> ')} | {r['frozen']['recipe']:.1f} | "
                     f"{r['tuned']['recipe']:.1f} | {r['ensemble']:.1f} | "
                     f"{r['frozen']['no_st']:.1f} | {r['tuned']['no_st']:.1f} | "
                     f"{r['tune_s']:.0f} |")
    cols = [[done[k][w][c] for k in keys] for w, c in (("frozen", "recipe"), ("tuned", "recipe"))]
    cols.append([done[k]["ensemble"] for k in keys])
    cols += [[done[k][w]["no_st"] for k in keys] for w in ("frozen", "tuned")]
    lines.append("| **mean [95 % CI]** | " + " | ".join(f"**{_ci(c)}**" for c in cols) + " | |")
    better = sum(done[k]["tuned"]["recipe"] > done[k]["frozen"]["recipe"] for k in keys)
    return "\n".join([
        "## Fine-tuning Whisper's middle layers on the source (`benchmarks/bench_finetune.py`)",
        "", (__doc__ or "").split("\n\n")[2].replace("\n", " "), "",
        f"UA %, 4 classes, transductive, k = 0; {len(keys)} directed pairs; run "
        f"{time.strftime('%Y-%m-%d %H:%M')} on 2 CPU cores.", "", *lines, "",
        f"The tuned layers beat the frozen ones under the recipe on {better} of {len(keys)} "
        "pairs."])


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    ap.add_argument("--store", type=Path, default=REPO / "cache" / "features")
    ap.add_argument("--sources", default=",".join(NAMES))
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    frames, frozen = load(args.corpora, args.store)
    cache = REPO / "benchmarks" / "out" / "finetune.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    body = report(measure(args.sources.split(","), frames, frozen, cache))
    print(body)
    if args.write:
        write_section("finetune", body)


if __name__ == "__main__":
    main()
