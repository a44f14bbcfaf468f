"""Issue 24's first direction: fine-tune Whisper's middle layers on the labelled source,
then run the shipped recipe on the tuned layers ("finetune" section).

    .venv/bin/python benchmarks/bench_finetune.py [--write]
    .venv/bin/python benchmarks/bench_finetune.py --pseudo [--source-cap N] [--write]

For each source of the grid (every single corpus, and the four others of each target):
Whisper base's blocks 2, 3 and 4 (the recipe's layers) are copied and trained on the
source's labelled utterances (4 classes) from the cached output of block 1
(`whisper:backend=torch,layer=1,pooling=none,level=rms`), with one linear head per block on
its mean-pooled output (logits averaged, class-weighted cross-entropy). No target audio or
label is seen by the tuning. Then the shipped recipe (`method: recommended`, transductive,
k = 0) runs on every grid task twice, on the frozen features (`whisper:...,layer=[2,3,4],
pooling=mean,level=rms`) and on the tuned blocks' mean-pooled outputs, on the clean target
and on the four stress variants of `variants.py` (the rows of `bench_grid.py --variant`;
for "short", the tuned blocks run on the 1-s windows' frames). Beside them: the mean of the
two recipes' probabilities, and label-free rules that pick between the runs (by their
target entropies, or by the source's speaker count), each rule's threshold chosen
leave-one-corpus-out. Settings fixed before any score: 3 epochs, batches of 8, AdamW (blocks
2e-5, heads 1e-3, weight decay 0.01), seed 0. Features: this machine's default bfloat16
autocast (`cpu_bf16=auto`), so the frozen rows differ slightly from the float32 "grid" table.

``--pseudo`` tunes per grid task instead, on at most ``--source-cap`` source utterances plus
the target's confident pseudo-labels (:func:`pseudo_task`); every cap measured so far (its
cache in ``benchmarks/out/finetune``) is reported side by side, with the tuning's own heads
as a classifier that needs no source data at prediction time.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
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
OUT = REPO / "benchmarks" / "out" / "finetune"
VARIANTS = ("clean", "confounded", "skewed", "few_speakers", "short")


def load(corpora: Path, store: Path) -> tuple[dict, dict]:
    """Per corpus: block-1 frames (one array per utterance), of the whole utterances and of
    their loudest 1-s windows (``<name>_short``, ``variants.short_manifest``); and the grid's
    data of the same rows (``bench_grid.load_data``: raw layer 3, RMS layers 2-4, RMS layer
    3, each also of the 1-s windows)."""
    from bench_grid import load_data
    from variants import short_manifest

    manifests = {n: load_manifest(corpora, n) for n in NAMES}
    manifests |= {f"{n}_short": short_manifest(manifests[n], REPO / "benchmarks" / "out"
                                               / "short" / n) for n in NAMES}
    frames = extract_features(store, manifests, FRAMES)
    data = load_data(corpora, list(NAMES), store, short=True)
    for n in NAMES:  # the rows the grid's data keeps are the frames' rows, in order
        assert list(data[n]["rms"].ids) == list(manifests[n]["path"]), n
    return frames, data


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


def finetune(encoder, frames: list[np.ndarray], labels: np.ndarray
             ) -> tuple[object, object, float]:
    """Blocks 2-4 of ``encoder`` tuned on (``frames``, ``labels``), their heads, and the
    seconds taken."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)
    blocks = copy.deepcopy(encoder.layers[1:4]).float()
    heads = nn.ModuleList(nn.Linear(encoder.config.d_model, len(CLASSES)) for _ in blocks)
    # a class absent from the labels (possible with picks alone) gets a finite, unused weight
    weight = torch.tensor(len(labels) / (len(CLASSES) * np.maximum(np.bincount(
        labels, minlength=len(CLASSES)), 1)), dtype=torch.float32)
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
    return blocks.eval(), heads.eval(), time.perf_counter() - t0


def over_batches(blocks, frames: list[np.ndarray], read) -> np.ndarray:
    """``read`` (the blocks' pooled outputs of a batch -> one row per utterance) over
    ``frames`` in batches of 16, without gradients; the rows stacked."""
    import torch

    with torch.no_grad():
        return np.concatenate([read(pooled_blocks(blocks, frames[s: s + 16])).numpy()
                               for s in range(0, len(frames), 16)])


def tuned_features(blocks, frames: list[np.ndarray]) -> np.ndarray:
    """The tuned blocks' mean-pooled outputs (blocks 2, 3, 4 side by side), float16."""
    import torch

    return over_batches(blocks, frames, lambda pooled: torch.cat(pooled, 1)).astype(np.float16)


def source_key(src: tuple[str, ...]) -> str:
    return src[0] if len(src) == 1 else "all-but-" + next(n for n in NAMES if n not in src)


def tune_all(sources: list[tuple[str, ...]], frames: dict, data: dict) -> None:
    """Tune blocks 2-4 on each source set once; keep every corpus's tuned features on disk
    (``OUT/<source>/<corpus>.npy``) and the seconds taken (``tune.json``): resumable."""
    from emobridge.features.registry import build_extractor

    encoder = None
    for src in sources:
        folder = OUT / source_key(src)
        if (folder / "tune.json").exists():
            continue
        encoder = encoder or build_extractor(FRAMES).load()
        labels = np.concatenate([data[s]["rms"].labels for s in src])
        blocks, _, secs = finetune(encoder, [f for s in src for f in frames[s]], labels)
        folder.mkdir(parents=True, exist_ok=True)
        for corpus in frames:
            np.save(folder / f"{corpus}.npy", tuned_features(blocks, frames[corpus]))
        write_text_atomic(folder / "tune.json", json.dumps({"seconds": secs}))
        print(f"tuned on {source_key(src)} in {secs:.0f} s", flush=True)


def with_features(like, feats):
    """``like`` (EmotionData) with ``feats`` (one vector or frame matrix per utterance: a list
    or an array's rows) as its features, float32."""
    return type(like)([np.asarray(f, dtype=np.float32) for f in feats], like.labels,
                      like.speakers, like.languages, like.ids, like.classes)


def tuned_data(folder: Path, data: dict) -> dict:
    """EmotionData per corpus (and per corpus's 1-s windows, ``<name>_short``) with the
    tuned features in ``folder``, rows as ``data``."""
    return {n + cut: with_features(data[n]["rms" + cut], np.load(folder / f"{n}{cut}.npy"))
            for n in NAMES for cut in ("", "_short")}


def recipe(source, target, params: dict, k: int = 0, seed: int = 0
           ) -> tuple[float, np.ndarray]:
    """UA % of the recipe (``params``) on ``target`` (transductive) and its probabilities;
    with ``k``, that many target rows are labelled (``bench_grid.labelled_draw``, ``seed``)
    and left out of the score and the probabilities."""
    from bench_grid import labelled_draw
    from emobridge.methods import build_method
    from emobridge.metrics import unweighted_average_recall

    pick, test = labelled_draw(target.labels, len(target.classes), k, seed)
    fitted = build_method("recommended", seed=seed, **params).fit(
        source, target.without_labels(), target.subset(pick) if k else None)
    proba = fitted.predict_proba(target.subset(test))
    return 100 * unweighted_average_recall(target.labels[test], proba.argmax(axis=1)), proba


def frozen_data(data: dict) -> dict:
    """The frozen recipe features per corpus (and per corpus's 1-s windows, ``<name>_short``),
    keyed as :func:`tuned_data`."""
    return {n + c: data[n]["rms" + c] for n in NAMES for c in ("", "_short")}


def both_recipes(src: tuple[str, ...], tgt: str, frozen: dict, tuned: dict, rows: np.ndarray,
                 k: int = 0, seed: int = 0) -> tuple[dict, dict]:
    """The recipe on frozen and on tuned features (target ``tgt``'s ``rows``; ``k`` of them
    labelled, drawn with ``seed``): UA of each run and of the mean of their probabilities
    (``ensemble``); and each run's probabilities on the scored rows."""
    from bench_grid import labelled_draw
    from emobridge.methods import EmotionData
    from emobridge.metrics import unweighted_average_recall

    row, probas = {}, {}
    for label, feats in (("frozen", frozen), ("tuned", tuned)):
        row[label], probas[label] = recipe(EmotionData.concat([feats[s] for s in src]),
                                           feats[tgt].subset(rows), {}, k, seed)
    labels = frozen[tgt].labels[rows]
    test = labelled_draw(labels, len(frozen[tgt].classes), k, seed)[1]
    row["ensemble"] = 100 * unweighted_average_recall(
        labels[test], (probas["frozen"] + probas["tuned"]).argmax(axis=1))
    return row, probas


def score_task(src: tuple[str, ...], tgt: str, rows: np.ndarray, data: dict, tuned: dict,
               kind: str) -> dict:
    """One task on the target's ``rows`` (of its 1-s windows for ``kind`` "short"): the
    recipe on frozen and on tuned features (UA and mean prediction entropy), the mean of
    their probabilities, and the variant floor's rows (``bench_grid.VARIANT_ROWS``); on the
    clean target also both without self-training."""
    from bench_grid import VARIANT_ROWS, score_rows
    from emobridge.methods import EmotionData
    from emobridge.methods.recommended import mean_entropy

    cut = "_short" * (kind == "short")
    frozen = frozen_data(data)
    row, probas = both_recipes(src, tgt + cut, frozen, tuned, rows)
    for label, feats in (("frozen", frozen), ("tuned", tuned)):
        row[label + "_entropy"] = mean_entropy(probas[label])
        if kind == "clean":
            row[label + "_no_st"] = recipe(EmotionData.concat([feats[s] for s in src]),
                                           feats[tgt + cut].subset(rows), {"rounds": []})[0]
    for label, feature, params in VARIANT_ROWS[1:]:
        row[label] = score_rows(data, src, tgt, feature, params, rows, cut=bool(cut))[0]
    return row


def measure(names: list[str], frames: dict, data: dict) -> dict:
    """Every grid task (``bench_grid.tasks``) on the clean target and on the variants of
    ``VARIANTS`` (``variants.py``, the same seeded rows as ``bench_grid.py --variant``)."""
    from bench_grid import tasks
    from variants import variant_rows

    grid = tasks(names)
    cache = OUT / "scores.json"
    done = json.loads(cache.read_text()) if cache.exists() else {}
    for i, (src, tgt) in enumerate(grid):
        tune_all([src], frames, data)
        tuned = tuned_data(OUT / source_key(src), data)
        ref = data[tgt]["rms"]
        for kind in VARIANTS:
            key = f"{kind}|{'+'.join(src)}>{tgt}"
            if key in done:
                continue
            rows = np.arange(len(ref)) if kind == "clean" else variant_rows(
                kind, ref.labels, ref.speakers, len(ref.classes), rotate=i)
            done[key] = score_task(src, tgt, rows, data, tuned, kind)
            write_text_atomic(cache, json.dumps(done))
            print(f"{key}: frozen {done[key]['frozen']:.1f}, tuned {done[key]['tuned']:.1f}",
                  flush=True)
    return done


#: Speakers per shared corpus (its README): the speaker-count gate's input.
SPEAKERS = {"ravdess": 24, "emodb": 10, "emovo": 6, "ased": 18, "emotiontts": 15}
ENTROPY_MARGINS = (-0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.2)
SPEAKER_COUNTS = (8, 12, 16, 20)


def choice(row: dict, src: tuple[str, ...], option: str) -> float:
    """UA of one label-free way to use the tuned layers: always frozen / tuned, the mean of
    the two recipes, the tuned run when its mean target entropy is at most ``1 + e`` times
    the frozen run's (``entropy e``), or when the source has at least S speakers (else the
    frozen run: ``speakers S``; else the mean of the two: ``speakers S, else mean``)."""
    if option in ("frozen", "tuned", "ensemble"):
        return row[option]
    rule, value, *rest = option.replace(",", "").split(" ")
    if rule == "entropy":
        keep = row["tuned_entropy"] <= row["frozen_entropy"] * (1 + float(value))
    else:
        keep = sum(SPEAKERS[s] for s in src) >= int(value)
    return row["tuned" if keep else "ensemble" if rest else "frozen"]


OPTIONS = ("frozen", "tuned", "ensemble", *(f"entropy {e:g}" for e in ENTROPY_MARGINS),
           *(f"speakers {n}" for n in SPEAKER_COUNTS),
           *(f"speakers {n}, else mean" for n in SPEAKER_COUNTS))


def collapsed(row: dict, ua: float) -> bool:
    """More than 2 points below the better of the per-corpus row and layer 3 + LR."""
    return ua < max(row["recipe, per-corpus z"], row["layer 3 + LR"]) - 2


def summary(done: dict, names: list[str]) -> tuple[list[str], dict, dict]:
    """Mean UA (and collapses on the variants) of every option; each rule's nested estimate
    (its margin or count chosen on the other four targets, over all variants together)."""
    from bench_grid import choose_leave_one_corpus_out, tasks

    grid = tasks(names)
    per = {(src, tgt, kind): {o: choice(done[f"{kind}|{'+'.join(src)}>{tgt}"], src, o)
                              for o in OPTIONS} for src, tgt in grid for kind in VARIANTS}
    lines = ["| option | " + " | ".join(VARIANTS) + " | collapses (variants) |",
             "|---" * (len(VARIANTS) + 2) + "|"]
    chosen_all, nested_rows = {}, {}
    for rule in ("entropy", "speakers", "any"):
        options = OPTIONS if rule == "any" else [o for o in OPTIONS if o.startswith(rule)]
        chosen, _ = choose_leave_one_corpus_out(per, tuple(options), names)
        chosen_all[rule] = chosen
        nested_rows[f"nested: {rule} rule chosen on the other four targets"] = {
            key: per[key][chosen[key[1]]] for key in per}
    rows = {o: {key: per[key][o] for key in per} for o in OPTIONS} | nested_rows
    for label, values in rows.items():
        means = [np.mean([v for (s, t, k), v in values.items() if k == kind])
                 for kind in VARIANTS]
        falls = sum(collapsed(done[f"{k}|{'+'.join(s)}>{t}"], v)
                    for (s, t, k), v in values.items() if k != "clean")
        lines.append(f"| {label} | " + " | ".join(f"{m:.1f}" for m in means) + f" | {falls} |")
    return lines, chosen_all, rows


def goals(done: dict, values: dict, names: list[str]) -> str:
    """Issue 24's clean-grid goals and the collapses per variant, for one option's UAs
    (``values``: (source, target, variant) -> UA)."""
    from bench_grid import REFERENCES, task_name

    clean = {(s, t): v for (s, t, k), v in values.items() if k == "clean"}
    loco = {t: s for s, t in clean if len(s) > 1}
    below = [f"{task_name(s, t)} {clean[s, t]:.1f} < B {ref[2]}" for (s0, t), ref in
             REFERENCES.items() for s in [loco[t] if s0 == "loco" else (s0,)]
             if clean[s, t] < ref[2]]
    falls = {kind: sum(collapsed(done[f"{k}|{'+'.join(s)}>{t}"], v) for (s, t, k), v in
                       values.items() if k == kind) for kind in VARIANTS[1:]}
    return (f"k = 0 mean {np.mean(list(clean.values())):.1f} (goal 75); RAVDESS -> EMO-DB "
            f"{clean[('ravdess',), 'emodb']:.1f} (goal 80); ASED -> EMOVO "
            f"{clean[('ased',), 'emovo']:.1f} (goal 45); below reference B: "
            f"{'; '.join(below) or 'none'}; collapses " +
            ", ".join(f"{k} {n}" for k, n in falls.items()))


def labelled_lines(labelled: dict, chosen: dict, names: list[str]) -> list[str]:
    """Mean UA of the k = 25 runs: frozen, tuned, their mean, and the speaker rule with the
    option chosen for each held-out target at k = 0 (``chosen``)."""
    from bench_grid import tasks

    cols: dict[str, list[float]] = {"frozen": [], "tuned": [], "ensemble": [], "rule": []}
    for src, tgt in tasks(names):
        rows = labelled[f"{'+'.join(src)}>{tgt}"]
        for c in ("frozen", "tuned", "ensemble"):
            cols[c].append(np.mean([r[c] for r in rows]))
        cols["rule"].append(np.mean([choice(r, src, chosen[tgt]) for r in rows]))
    return ["| k = 25 (3 seeds) | frozen | tuned | mean of the two | nested speaker rule "
            "(k = 0 choices) |", "|---|---|---|---|---|",
            "| mean UA over the 25 tasks | " + " | ".join(f"{np.mean(v):.1f}"
                                                      for v in cols.values()) + " |"]


def report(done: dict, names: list[str], labelled: dict) -> str:
    from bench_grid import _ci, task_name, tasks

    lines = ["| task | recipe, frozen | recipe, tuned | mean of the two | frozen, no "
             "self-training | tuned, no self-training | entropy frozen / tuned | tuning (s) |",
             "|---" * 8 + "|"]
    cols: dict[str, list[float]] = {c: [] for c in ("frozen", "tuned", "ensemble",
                                                    "frozen_no_st", "tuned_no_st")}
    for src, tgt in tasks(names):
        r = done[f"clean|{'+'.join(src)}>{tgt}"]
        for c in cols:
            cols[c].append(r[c])
        secs = json.loads((OUT / source_key(src) / "tune.json").read_text())["seconds"]
        lines.append(f"| {task_name(src, tgt)} | " + " | ".join(f"{r[c]:.1f}" for c in cols)
                     + f" | {r['frozen_entropy']:.3f} / {r['tuned_entropy']:.3f} | {secs:.0f} |")
    lines.append("| **mean [95 % CI]** | " + " | ".join(f"**{_ci(v)}**" for v in cols.values())
                 + " | | |")
    table, chosen, rows = summary(done, names)
    picked = "; ".join(f"{rule}: " + ", ".join(f"{h} {o}" for h, o in c.items())
                       for rule, c in chosen.items())
    return "\n".join([
        "## Fine-tuning Whisper's middle layers on the source (`benchmarks/bench_finetune.py`)",
        "", " ".join((__doc__ or "").split("\n\n")[2].split()), "",
        f"UA %, 4 classes, transductive, k = 0; the 25 grid tasks; written "
        f"{time.strftime('%Y-%m-%d %H:%M')} on 2 CPU cores.", "", *lines, "",
        "Every option on the clean target and on the stress variants of `variants.py` (the "
        "rows of `bench_grid.py --variant`; mean UA %), with the variant tasks that fall more "
        "than 2 points below the better of the frozen recipe's per-corpus row and layer 3 + "
        "LR (100 variant tasks):", "", *table, "",
        f"Chosen leave-one-corpus-out (held-out target: option): {picked}.", "",
        "Issue 24's goals (clean grid) and collapses per variant (of 25 tasks each):", "",
        *(f"- {label}: {goals(done, rows[label], names)}." for label in rows
          if label in ("frozen", "tuned", "ensemble") or label.startswith("nested")), "",
        "With 25 labelled target utterances (the grid's k = 25 protocol, goal: mean >= 86):",
        "", *labelled_lines(labelled, chosen["speakers"], names)])


def measure_labelled(data: dict, names: list[str], k: int = 25, seeds: int = 3) -> dict:
    """Every grid task with ``k`` labelled target utterances (the grid's k = 25 protocol):
    the recipe on frozen and on tuned features and the mean of the two, per seed (cached)."""
    from bench_grid import tasks

    cache = OUT / f"k{k}.json"
    done = json.loads(cache.read_text()) if cache.exists() else {}
    frozen = frozen_data(data)
    for src, tgt in tasks(names):
        key = f"{'+'.join(src)}>{tgt}"
        if len(done.get(key, [])) == seeds:
            continue
        tuned, everything = tuned_data(OUT / source_key(src), data), np.arange(len(frozen[tgt]))
        rows = [both_recipes(src, tgt, frozen, tuned, everything, k, seed)[0]
                for seed in range(seeds)]
        done[key] = rows
        write_text_atomic(cache, json.dumps(done))
        print(f"k={k} {key}: " + ", ".join(f"{c} {np.mean([r[c] for r in rows]):.1f}"
                                           for c in rows[0]), flush=True)
    return done


def low_rank(blocks, frozen, rank: int | None) -> tuple[object, int]:
    """``blocks`` with each weight matrix's change from ``frozen`` cut to its ``rank`` largest
    singular directions (vectors kept whole; ``None``: unchanged); and the bytes of that
    change stored in float16 (two factors per matrix), what a bundle would carry."""
    import torch

    cut, nbytes = copy.deepcopy(blocks), 0
    with torch.no_grad():
        for p, q in zip(cut.parameters(), frozen.parameters(), strict=True):
            delta = p - q.float()
            if delta.ndim == 2 and rank is not None:
                u, sv, vt = torch.linalg.svd(delta, full_matrices=False)
                delta = (u[:, :rank] * sv[:rank]) @ vt[:rank]
                nbytes += 2 * rank * sum(delta.shape)
            else:
                nbytes += 2 * delta.numel()
            p.copy_(q.float() + delta)
    return cut.eval(), nbytes


def measure_ranks(frames: dict, data: dict, src: str = "ravdess", tgt: str = "emodb") -> str:
    """The recipe on ``src`` -> ``tgt`` with the tuned blocks' changes cut to low rank."""
    from emobridge.features.registry import build_extractor

    encoder = build_extractor(FRAMES).load()
    blocks, _, _ = finetune(encoder, frames[src], data[src]["rms"].labels)
    lines = ["| rank of each matrix's change | stored change (MB, float16) | UA % |",
             "|---|---|---|"]
    for rank in (4, 16, 64, None):
        cut, nbytes = low_rank(blocks, encoder.layers[1:4], rank)
        feats = {n: with_features(data[n]["rms"], tuned_features(cut, frames[n]))
                 for n in (src, tgt)}
        ua = recipe(feats[src], feats[tgt], {})[0]
        lines.append(f"| {rank or 'full'} | {nbytes / 1e6:.2f} | {ua:.1f} |")
        print(lines[-1], flush=True)
    return "\n".join([
        "### Size of the tuned layers (`bench_finetune.py --ranks`)", "",
        f"{src} -> {tgt}, the recipe on blocks 2-4 tuned on {src} (as above), with each weight "
        "matrix's change from the pretrained one cut to its largest singular directions "
        "(truncated SVD; biases and layer norms kept whole).", "", *lines])


#: Pseudo-label tuning: at most this many source utterances (a seeded draw) join the
#: target's picks. 1000 was fixed before any score to keep one adaptation from four corpora
#: near 5 min on 2 cores (measured 302-374 s: RESULTS.md, "finetune-pseudo"); ``--source-cap``
#: measures other caps beside it.
SOURCE_CAP = 1000


def pseudo_task(encoder, src: tuple[str, ...], tgt: str, frames: dict, data: dict,
                cap: int = SOURCE_CAP, picks_from: str = "frozen") -> dict:
    """One adaptation: the frozen recipe's pseudo-labels on the target (``picks_from``
    "mean": the mean of the frozen recipe's and the source-tuned recipe's probabilities,
    the source's tuning from :func:`tune_all`), blocks 2-4 tuned on a capped source draw
    plus the confident half of each predicted class, the recipe again on the tuned blocks;
    UAs, pick accuracy and seconds."""
    from emobridge.methods import EmotionData
    from emobridge.methods.tuned_recipe import confident_picks
    from emobridge.metrics import unweighted_average_recall

    t0 = time.perf_counter()
    frozen = frozen_data(data)
    ua_frozen, proba = recipe(EmotionData.concat([frozen[s] for s in src]), frozen[tgt], {})
    labels, extra = frozen[tgt].labels, {}
    if picks_from == "mean":
        tuned = tuned_data(OUT / source_key(src), data)
        extra["source_tuned"], source_proba = recipe(
            EmotionData.concat([tuned[s] for s in src]), tuned[tgt], {})
        proba = (proba + source_proba) / 2
        extra["picks_from_ua"] = 100 * unweighted_average_recall(labels, proba.argmax(1))
    picks = confident_picks(proba, 0.5)
    source_frames = [f for s in src for f in frames[s]]
    source_labels = np.concatenate([frozen[s].labels for s in src])
    keep = np.sort(np.random.default_rng(0).permutation(len(source_labels))[:cap])
    blocks, heads, secs = finetune(encoder, [source_frames[i] for i in keep]
                            + [frames[tgt][i] for i in picks],
                            np.concatenate([source_labels[keep], proba[picks].argmax(1)]))
    feats = {n: with_features(frozen[n], tuned_features(blocks, frames[n]))
             for n in (*src, tgt)}
    ua, tuned_proba = recipe(EmotionData.concat([feats[s] for s in src]), feats[tgt], {})
    adapt_s = time.perf_counter() - t0
    return {"frozen": ua_frozen, "pseudo": ua, "ensemble": 100 * unweighted_average_recall(
        labels, (proba + tuned_proba).argmax(axis=1)),
        "heads": 100 * unweighted_average_recall(labels, head_classes(blocks, heads, frames[
            tgt])),
        "picks_right": 100 * float(np.mean(proba[picks].argmax(1) == labels[picks])),
        "tuned_on": int(len(keep) + len(picks)), "tune_s": secs, "adapt_s": adapt_s} | extra


def head_classes(blocks, heads, frames: list[np.ndarray]) -> np.ndarray:
    """The tuning's own classifier (its heads' averaged logits) on ``frames``: what an
    adaptation that keeps no source data could predict."""
    return over_batches(blocks, frames, lambda pooled: sum(
        h(p) for h, p in zip(heads, pooled, strict=True)).argmax(1))


def pseudo_cache(cap: int, picks_from: str = "frozen") -> Path:
    """Where :func:`measure_pseudo` keeps the tasks done with source cap ``cap`` and picks
    from ``picks_from``."""
    stem = "pseudo" if cap == SOURCE_CAP else f"pseudo-cap{cap}"
    return OUT / (stem + ("" if picks_from == "frozen" else f"-{picks_from}") + ".json")


def measure_pseudo(frames: dict, data: dict, names: list[str], cap: int = SOURCE_CAP,
                   picks_from: str = "frozen") -> dict:
    """:func:`pseudo_task` on every grid task, cached per task (:func:`pseudo_cache`); with
    picks from the "mean", each source tuned first (:func:`tune_all`, cached)."""
    from bench_grid import tasks
    from emobridge.features.registry import build_extractor

    cache = pseudo_cache(cap, picks_from)
    done = json.loads(cache.read_text()) if cache.exists() else {}
    encoder = None
    for src, tgt in tasks(names):
        key = f"{'+'.join(src)}>{tgt}"
        if key in done:
            continue
        if picks_from == "mean":
            tune_all([src], frames, data)
        encoder = encoder or build_extractor(FRAMES).load()
        done[key] = pseudo_task(encoder, src, tgt, frames, data, cap, picks_from)
        write_text_atomic(cache, json.dumps(done))
        print(f"{key}: " + ", ".join(f"{c} {v:.1f}" for c, v in done[key].items()), flush=True)
    return done


def pseudo_options(runs: dict[int, dict], names: list[str], mean_runs: dict[int, dict]
                   ) -> dict:
    """Task -> option -> value: the frozen recipe, the pseudo-tuned recipe with each measured
    source cap (``pseudo`` for :data:`SOURCE_CAP`, ``pseudo, cap N`` for the others), the
    mean of the frozen and the :data:`SOURCE_CAP` run; and the first run's pick accuracy,
    size of the tuning set and seconds per cap. With picks from the mean of the frozen and
    source-tuned recipes (``mean_runs``, per cap): the source-tuned recipe, that mean, and
    the pseudo-tuned recipe on its picks (``pseudo, mean picks, cap N``), and the gate of
    :func:`choice` between the two picks: the mean's when the source has at least S
    speakers, else the frozen recipe's."""
    from bench_grid import tasks

    per = {}
    for s, t in tasks(names):
        key = f"{'+'.join(s)}>{t}"
        base = runs[SOURCE_CAP][key]
        row = {o: base[o] for o in ("frozen", "pseudo", "ensemble", "picks_right")}
        for cap, done in runs.items():
            # the picks come from the same deterministic frozen run whatever the cap
            assert abs(done[key]["frozen"] - base["frozen"]) < 0.05, key
            label = "pseudo" if cap == SOURCE_CAP else f"pseudo, cap {cap}"
            row |= {label: done[key]["pseudo"], f"tuned_on {cap}": done[key]["tuned_on"],
                    f"adapt_s {cap}": done[key]["adapt_s"]}
            if "heads" in done[key]:  # measured from the source-cap runs on
                row[f"heads, cap {cap}"] = done[key]["heads"]
        for cap, done in mean_runs.items():
            assert abs(done[key]["frozen"] - base["frozen"]) < 0.05, key
            row |= {"source-tuned": done[key]["source_tuned"],
                    "frozen + source-tuned": done[key]["picks_from_ua"],
                    f"pseudo, mean picks, cap {cap}": done[key]["pseudo"],
                    f"ensemble, mean picks, cap {cap}": done[key]["ensemble"],
                    f"picks_right mean {cap}": done[key]["picks_right"],
                    f"adapt_s mean {cap}": done[key]["adapt_s"]}
            for n in SPEAKER_COUNTS:  # the source-tuned layers help from many speakers
                row[f"speakers {n}: mean picks, else frozen picks, cap {cap}"] = row[
                    f"pseudo, mean picks, cap {cap}" if sum(SPEAKERS[c] for c in s) >= n
                    else "pseudo" if cap == SOURCE_CAP else f"pseudo, cap {cap}"]
        per[s, t] = row
    return per


def mean_picks_lines(per: dict, caps: list[int]) -> list[str]:
    """The table of the runs with picks from the mean of the frozen and source-tuned
    recipes (``--picks-from mean``), one column group per source cap in ``caps``."""
    from bench_grid import _ci, task_name

    cols = ("frozen", "source-tuned", "frozen + source-tuned",
            *(f"{o}, mean picks, cap {c}" for c in caps for o in ("pseudo", "ensemble")))
    lines = ["| task | recipe, frozen | recipe, source-tuned | mean of the two (the picks) | "
             + "".join(f"tuned on source ({c}) + those picks | mean of the picks' and the "
                       f"tuned recipe ({c}) | " for c in caps)
             + "picks right (%) | adaptation (s) |", "|---" * (len(cols) + 3) + "|"]
    for (s, t), r in per.items():
        lines.append(f"| {task_name(s, t)} | " + " | ".join(f"{r[c]:.1f}" for c in cols)
                     + " | " + " / ".join(f"{r[f'picks_right mean {c}']:.0f}" for c in caps)
                     + " | " + " / ".join(f"{r[f'adapt_s mean {c}']:.0f}" for c in caps) + " |")
    lines.append("| **mean [95 % CI]** | " + " | ".join(
        f"**{_ci([r[c] for r in per.values()])}**" for c in cols) + " | | |")
    times = [f"source cap {c}: median {np.median(a):.0f} s, max {max(a):.0f} s" for c in caps
             for a in [[r[f"adapt_s mean {c}"] for r in per.values()]]]
    return ["Pseudo-labels from the mean of the frozen and the source-tuned recipes' "
            "probabilities (`--picks-from mean`; the source tuned once, as in \"finetune\", "
            "its target features computed beforehand and not counted in the adaptation "
            "time); the pseudo-label tuning then starts from Whisper's own blocks as above.",
            "", *lines, "", "One adaptation (both recipes, tuning, tuned features, recipe "
            "again): " + "; ".join(times) + "."]


def pseudo_report(runs: dict[int, dict], names: list[str], mean_runs: dict[int, dict]
                  ) -> str:
    """Per task and mean: frozen recipe, pseudo-label tuned recipe (each source cap in
    ``runs``), the mean of the frozen and the first; the same with picks from the mean of
    the frozen and source-tuned recipes (``mean_runs``); the option chosen
    leave-one-corpus-out among all; issue 24's clean-grid goals for each."""
    from bench_grid import _ci, choose_leave_one_corpus_out, task_name

    caps, mean_caps = sorted(runs, reverse=True), sorted(mean_runs, reverse=True)
    per = pseudo_options(runs, names, mean_runs)
    heads = [c for c in caps if f"heads, cap {c}" in next(iter(per.values()))]
    options = ("frozen", "pseudo", *(f"pseudo, cap {c}" for c in caps if c != SOURCE_CAP),
               *(f"heads, cap {c}" for c in heads), "ensemble")
    extra = ("source-tuned", "frozen + source-tuned", *(
        f"{o}, mean picks, cap {c}" for c in mean_caps for o in ("pseudo", "ensemble")), *(
        f"speakers {n}: mean picks, else frozen picks, cap {c}" for c in mean_caps
        for n in SPEAKER_COUNTS)) if mean_caps else ()
    chosen, nested = choose_leave_one_corpus_out(per, options + extra, names)
    lines = ["| task | recipe, frozen | recipe, tuned on source + pseudo-labels | "
             + "".join(f"same, at most {c} source utterances | " for c in caps[1:])
             + "".join(f"the tuning's own heads, cap {c} | " for c in heads)
             + "mean of frozen and tuned | pseudo-labels right (%) | utterances tuned on | "
             "adaptation (s) |", "|---" * (len(options) + 4) + "|"]
    for (s, t), r in per.items():
        lines.append(f"| {task_name(s, t)} | " + " | ".join(
            f"{r[c]:.1f}" for c in (*options, "picks_right")) + " | " + " / ".join(
            str(r[f"tuned_on {c}"]) for c in caps) + " | " + " / ".join(
            f"{r[f'adapt_s {c}']:.0f}" for c in caps) + " |")
    columns = {o: [r[o] for r in per.values()] for o in options + extra} | {"nested": nested}
    lines.append("| **mean [95 % CI]** | " + " | ".join(f"**{_ci(columns[o])}**" for o in options)
                 + " | | | |")
    times = [f"source cap {c}: median {np.median(a):.0f} s, max {max(a):.0f} s" for c in caps
             for a in [[r[f"adapt_s {c}"] for r in per.values()]]]
    return "\n".join([
        "### Tuning on the source and the pseudo-labelled target (`bench_finetune.py "
        "--pseudo`)", "", " ".join((pseudo_task.__doc__ or "").split()),
        f"Settings fixed before any score: those of the source tuning above, at most "
        f"{SOURCE_CAP} source utterances (seed 0); `--source-cap N` re-runs the grid with at "
        "most N (0: the target's picks alone). No target label is used but to score.",
        "", f"UA %, 4 classes, transductive, k = 0; written {time.strftime('%Y-%m-%d %H:%M')} "
        "on 2 CPU cores. Utterances tuned on and adaptation seconds per source cap, "
        f"{' / '.join(map(str, caps))}.", "", *lines, "",
        "One adaptation (frozen recipe, tuning, tuned features, recipe again): "
        + "; ".join(times) + ".", "", *(mean_picks_lines(per, mean_caps) if mean_caps else []),
        "", "Chosen leave-one-corpus-out among all the options above (held-out target: "
        "option): " + "; ".join(f"{h}: {o}" for h, o in chosen.items()) + ".", "",
        *pseudo_goals(per, columns, chosen)])


def pseudo_goals(per: dict, columns: dict, chosen: dict) -> list[str]:
    """One line per option (and the nested choice): issue 24's clean-grid goals."""
    from bench_grid import REFERENCES, task_name

    goal_lines = []
    for label, values in columns.items():
        ua = dict(zip(per, values, strict=True)) if label != "nested" else {
            key: per[key][chosen[key[1]]] for key in per}
        loco = {t: s for s, t in ua if len(s) > 1}
        below = [f"{task_name(s, t)} {ua[s, t]:.1f} < B {ref[2]}" for (s0, t), ref in
                 REFERENCES.items() for s in [loco[t] if s0 == "loco" else (s0,)]
                 if ua[s, t] < ref[2]]
        goal_lines.append(
            f"- {label}: k = 0 mean {np.mean(list(ua.values())):.1f} (goal 75); RAVDESS -> "
            f"EMO-DB {ua[('ravdess',), 'emodb']:.1f} (goal 80); ASED -> EMOVO "
            f"{ua[('ased',), 'emovo']:.1f} (goal 45); below reference B: "
            f"{'; '.join(below) or 'none'}.")
    return goal_lines


#: Tasks re-run through the shipped method (``--shipped``): the first two of the grid, the
#: pseudo-label check's all others -> emotiontts and EMOVO -> ASED.
SHIPPED_TASKS = ((("ravdess",), "emodb"), (("ravdess",), "emovo"),
                 (("ravdess", "emodb", "emovo", "ased"), "emotiontts"), (("emovo",), "ased"))


def measure_shipped(frames: dict, data: dict) -> str:
    """``method: recommended_tuned`` (the library's path: Trainer, float16 change) on
    ``SHIPPED_TASKS``, beside this script's own tuning loop (:func:`pseudo_cache`)."""
    from bench_grid import task_name
    from emobridge.methods import EmotionData, build_method
    from emobridge.metrics import unweighted_average_recall

    cap = build_method("recommended_tuned").source_cap
    cached = json.loads(pseudo_cache(cap).read_text())
    lines = ["| task | script's loop | `recommended_tuned` | adaptation (s) |", "|---|---|---|---|"]
    as_frames = {n: with_features(data[n]["rms"], frames[n]) for n in NAMES}
    for src, tgt in SHIPPED_TASKS:
        start = time.perf_counter()
        method = build_method("recommended_tuned").fit(
            EmotionData.concat([as_frames[s] for s in src]), as_frames[tgt].without_labels())
        ua = 100 * unweighted_average_recall(as_frames[tgt].labels,
                                             method.predict(as_frames[tgt]))
        loop = cached["+".join(src) + ">" + tgt]["pseudo"]
        lines.append(f"| {task_name(src, tgt)} | {loop:.1f} | {ua:.1f} | "
                     f"{time.perf_counter() - start:.0f} |")
        print(lines[-1], flush=True)
    return "\n".join(["### The shipped path (`bench_finetune.py --shipped`)", "",
                      " ".join((measure_shipped.__doc__ or "").split()),
                      f"Both with the method's default source cap, {cap}; written "
                      f"{time.strftime('%Y-%m-%d %H:%M')} on 2 CPU cores.", "", *lines])


#: A :func:`pseudo_cache` file's stem: its source cap (none: :data:`SOURCE_CAP`) and picks.
CACHE_STEM = re.compile(r"pseudo(?:-cap(\d+))?(?:-(mean))?")


def measured_caps(picks_from: str) -> set[int]:
    """The source caps with a cache for picks from ``picks_from`` (:func:`pseudo_cache`); for
    the frozen picks always :data:`SOURCE_CAP`, the first run."""
    caps = {SOURCE_CAP} if picks_from == "frozen" else set()
    for path in OUT.glob("pseudo*.json"):
        match = CACHE_STEM.fullmatch(path.stem)
        if match and (match[2] or "frozen") == picks_from:
            caps.add(int(match[1]) if match[1] else SOURCE_CAP)
    return caps


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    ap.add_argument("--store", type=Path, default=REPO / "cache" / "features")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--ranks", action="store_true",
                    help="measure low-rank cuts of the tuned layers (RAVDESS -> EMO-DB) only")
    ap.add_argument("--pseudo", action="store_true",
                    help="tune on source + pseudo-labelled target, every grid task")
    ap.add_argument("--source-cap", type=int, default=SOURCE_CAP, metavar="N",
                    help="with --pseudo: tune on at most N source utterances (0: picks alone)")
    ap.add_argument("--picks-from", choices=("frozen", "mean"), default="frozen",
                    help="with --pseudo: pseudo-labels from the frozen recipe, or from the mean "
                    "of the frozen and the source-tuned recipes")
    ap.add_argument("--shipped", action="store_true",
                    help="four tasks through method recommended_tuned")
    args = ap.parse_args()
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    frames, data = load(args.corpora, args.store)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.ranks:
        name, body = "finetune-ranks", measure_ranks(frames, data)
    elif args.shipped:
        name, body = "finetune-shipped", measure_shipped(frames, data)
    elif args.pseudo:
        runs = {}
        for picks in ("frozen", "mean"):
            caps = measured_caps(picks) | ({args.source_cap} if picks == args.picks_from
                                           else set())
            runs[picks] = {c: measure_pseudo(frames, data, list(NAMES), c, picks)
                           for c in sorted(caps)}
        name, body = "finetune-pseudo", pseudo_report(runs["frozen"], list(NAMES),
                                                      runs["mean"])
    else:
        done = measure(list(NAMES), frames, data)
        name, body = "finetune", report(done, list(NAMES), measure_labelled(data, list(NAMES)))
    print(body)
    if args.write:
        write_section(name, body)


if __name__ == "__main__":
    main()
