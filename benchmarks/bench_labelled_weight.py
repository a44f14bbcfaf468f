"""How much a labelled target utterance weighs against a source utterance in the recipe's
fits (``labelled_weight``), chosen leave-one-corpus-out on the grid's k = 25 tasks.

    .venv/bin/python benchmarks/bench_labelled_weight.py [--write]

Protocol as the grid's k = 25 columns (``bench_grid.py``): 25 labelled target utterances
(class-stratified draw per seed, 3 seeds) join the training data and are left out of the
score; the whole target is the unlabelled pool. For each held-out target corpus the weight
with the best mean UA over the tasks of the other four targets is chosen and scored on the
held-out one (nested estimate).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from _common import REPO, write_section
from bench_grid import choose_leave_one_corpus_out, grid_inputs, task_name, tasks
from emobridge.fileio import write_text_atomic

WEIGHTS = (1.0, 3.0, 10.0, 30.0)
SEEDS = 3


def measure(data: dict, names: list[str], cache: Path) -> dict:
    from emobridge.methods import EmotionData, build_method
    from emobridge.metrics import unweighted_average_recall

    done = json.loads(cache.read_text()) if cache.exists() else {}
    for (src, tgt), seed in ((t, s) for t in tasks(names) for s in range(SEEDS)):
        key = f"{'+'.join(src)}>{tgt}|{seed}"
        if key in done:
            continue
        source = EmotionData.concat([data[s]["rms"] for s in src])
        target = data[tgt]["rms"]
        rng = np.random.default_rng(seed)  # the grid's k = 25 draw
        pick = np.concatenate([rng.permutation(np.flatnonzero(target.labels == c))[
            :25 // 4 + (c < 25 % 4)] for c in range(len(target.classes))])
        test = np.setdiff1d(np.arange(len(target)), pick)
        done[key] = {}
        for w in WEIGHTS:
            fitted = build_method("recommended", labelled_weight=w).fit(
                source, target.without_labels(), target.subset(pick))
            done[key][str(w)] = 100 * unweighted_average_recall(
                target.labels[test], fitted.predict(target.subset(test)))
        write_text_atomic(cache, json.dumps(done))
        print(key, {k: round(v, 1) for k, v in done[key].items()}, flush=True)
    return done


def report(done: dict, names: list[str], shipped: float) -> str:
    per = {t: {w: float(np.mean([done[f"{'+'.join(t[0])}>{t[1]}|{s}"][str(w)]
                                 for s in range(SEEDS)])) for w in WEIGHTS}
           for t in tasks(names)}
    chosen, nested = choose_leave_one_corpus_out(per, WEIGHTS, names)
    head = "| task | " + " | ".join(f"w = {w:g}" for w in WEIGHTS) + " |"
    lines = [head, "|---|" + "---|" * len(WEIGHTS)]
    lines += [f"| {task_name(*t)} | " + " | ".join(f"{per[t][w]:.1f}" for w in WEIGHTS) + " |"
              for t in per]
    lines.append("| **mean** | " + " | ".join(
        f"**{np.mean([per[t][w] for t in per]):.1f}**" for w in WEIGHTS) + " |")
    return "\n".join([
        "## Weight of labelled target utterances (`benchmarks/bench_labelled_weight.py`)", "",
        f"The recipe at k = 25 (grid protocol, {SEEDS} seeds, mean UA %) with each labelled "
        "target utterance weighted w against a source utterance.", "", *lines, "",
        "Chosen leave-one-corpus-out (held-out target: w): "
        + ", ".join(f"{n}: {w:g}" for n, w in chosen.items())
        + f"; nested estimate {np.mean(nested):.1f}. Shipped: `labelled_weight` = {shipped:g}."])


def main() -> None:
    from emobridge.methods.recommended import Recommended

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true")
    args, names, data = grid_inputs(ap)
    cache = REPO / "benchmarks" / "out" / "labelled_weight.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    body = report(measure(data, names, cache), names, Recommended().labelled_weight)
    print(body)
    if args.write:
        write_section("labelled-weight", body)


if __name__ == "__main__":
    main()
